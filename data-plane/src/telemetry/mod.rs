//! What the sidecar tells about the traffic it carries: Prometheus
//! `metrics` (and the TCP `meter` behind them) in either `exposition` format, per-interval aggregates it
//! `report`s to the control plane, distributed `trace`s, JSON
//! `access_log`s, and the per-request `observe`r that feeds them all the
//! same way in both directions; `opaque` TCP connections by peer identity.

pub mod access_log;
pub mod exposition;
pub mod meter;
pub mod metrics;
pub mod observe;
pub mod opaque;
pub mod report;
pub mod trace;

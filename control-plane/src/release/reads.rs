//! What the controller reads of the mesh: the split a release moves
//! (checked to carry its stable and canary, the stable found when the
//! spec names none) and each backend's own traffic from the telemetry
//! window.

use super::analysis::Sample;
use super::error::Error;
use super::machine::Record;
use super::spec::Spec;
use crate::state::State;
use crate::telemetry::Window;
use std::time::Duration;

/// `spec` with its stable and canary checked against the split in force.
pub(super) fn resolve(state: &State, mut spec: Spec) -> Result<Spec, Error> {
    let st = state.status(&spec.namespace, &spec.service)?;
    let service = format!("{}/{}", spec.namespace, spec.service);
    if !st.has_split {
        return Err(Error::Split(format!(
            "nothing splits {service}: apply a TrafficSplit (or HTTPRoute) with the stable and the canary as backends first"
        )));
    }
    let names: Vec<&str> = st.backends.iter().map(|b| b.service.as_str()).collect();
    if !names.contains(&spec.canary.as_str()) {
        return Err(Error::Split(format!(
            "{} routes to {}, not to the canary {:?}",
            st.routed_by,
            names.join(", "),
            spec.canary
        )));
    }
    if spec.stable.is_empty() {
        let others: Vec<&&str> = names.iter().filter(|n| **n != spec.canary).collect();
        match others.as_slice() {
            [one] => spec.stable = (**one).to_string(),
            _ => {
                return Err(Error::Split(format!(
                    "{} has {} backends besides the canary; name the stable",
                    st.routed_by,
                    others.len()
                )));
            }
        }
    } else if !names.contains(&spec.stable.as_str()) {
        return Err(Error::Split(format!(
            "{} routes to {}, not to the stable {:?}",
            st.routed_by,
            names.join(", "),
            spec.stable
        )));
    }
    Ok(spec)
}

/// The canary's and the stable's own traffic over the last `window_ms`.
pub(super) fn samples(state: &State, window: &Window, r: &Record, window_ms: u64) -> [Sample; 2] {
    let span = Duration::from_millis(window_ms);
    [&r.spec.canary, &r.spec.stable].map(|backend| {
        let Some((service, version)) = state.origin(&r.spec.namespace, backend) else {
            return Sample::default();
        };
        window
            .stats_within(Some(&service), span, "inbound")
            .into_iter()
            .find(|row| row.version == version)
            .map(|row| Sample {
                requests: row.requests,
                failures: row.failures,
                success_rate: row.success_rate.map(|s| s * 100.0),
                p99_ms: row.p99_ms,
            })
            .unwrap_or_default()
    })
}

//! The control plane's objects as `meshctl install` renders them: its
//! ServiceAccount and least-privilege RBAC (list and watch what it reads;
//! patch only rule statuses, its Lease and its webhook configuration;
//! create its Lease and CA Secret once), the Deployment (replicas spread
//! over nodes, probes on its HTTP port, requests and limits, non-root,
//! read-only root filesystem, no privilege escalation, every capability
//! dropped), its Service and a PodDisruptionBudget that keeps one replica
//! through a drain.

use crate::install::Values;

const LABELS: &str =
    "    app.kubernetes.io/name: mesh-control\n    app.kubernetes.io/part-of: mesh";

/// ServiceAccount, ClusterRole and Role, and their bindings.
pub fn rbac() -> String {
    format!(
        "# mesh-control's identity and what it may do: read the registry and the
# rules, review workload tokens, write only what it owns.
apiVersion: v1
kind: ServiceAccount
metadata:
  name: mesh-control
  namespace: mesh-system
  labels:
{LABELS}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: mesh-control
  labels:
{LABELS}
rules:
  # The registry.
  - apiGroups: [\"\"]
    resources: [services, pods]
    verbs: [get, list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [get, list, watch]
  # The rules, and their status (written by the leader alone; the leader
  # also patches a TrafficSplit's weights for a Release).
  - apiGroups: [split.smi-spec.io]
    resources: [trafficsplits]
    verbs: [get, list, watch, patch]
  - apiGroups: [specs.smi-spec.io]
    resources: [httproutegroups]
    verbs: [get, list, watch]
  - apiGroups: [mesh.dev]
    resources: [trafficpolicies, authorizationpolicies]
    verbs: [get, list, watch]
  - apiGroups: [split.smi-spec.io]
    resources: [trafficsplits/status]
    verbs: [patch]
  - apiGroups: [specs.smi-spec.io]
    resources: [httproutegroups/status]
    verbs: [patch]
  - apiGroups: [mesh.dev]
    resources: [trafficpolicies/status, authorizationpolicies/status]
    verbs: [patch]
  # Releases: their status is the controller's persisted state, and the
  # leader clears each command annotation it carries out.
  - apiGroups: [mesh.dev]
    resources: [releases]
    verbs: [get, list, watch, patch]
  - apiGroups: [mesh.dev]
    resources: [releases/status]
    verbs: [patch]
  # Gateway API HTTPRoutes (installed by the cluster's owner, maybe later:
  # the CRD is watched by name to learn when), and their status.parents.
  - apiGroups: [gateway.networking.k8s.io]
    resources: [httproutes]
    verbs: [get, list, watch]
  - apiGroups: [gateway.networking.k8s.io]
    resources: [httproutes/status]
    verbs: [patch]
  - apiGroups: [apiextensions.k8s.io]
    resources: [customresourcedefinitions]
    verbs: [get, list, watch]
  # Workload identity: each sidecar's projected token.
  - apiGroups: [authentication.k8s.io]
    resources: [tokenreviews]
    verbs: [create]
  # Its own webhook configurations' caBundle, and no other's.
  - apiGroups: [admissionregistration.k8s.io]
    resources: [validatingwebhookconfigurations]
    resourceNames: [mesh-control]
    verbs: [get, list, watch, patch]
  - apiGroups: [admissionregistration.k8s.io]
    resources: [mutatingwebhookconfigurations]
    resourceNames: [mesh-inject]
    verbs: [get, list, watch, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: mesh-control
  labels:
{LABELS}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: mesh-control
subjects:
  - kind: ServiceAccount
    name: mesh-control
    namespace: mesh-system
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: mesh-control
  namespace: mesh-system
  labels:
{LABELS}
rules:
  # Leader election: its Lease, created once.
  - apiGroups: [coordination.k8s.io]
    resources: [leases]
    resourceNames: [mesh-control]
    verbs: [get, patch]
  - apiGroups: [coordination.k8s.io]
    resources: [leases]
    verbs: [create]
  # The CA every replica shares, created once by the first.
  - apiGroups: [\"\"]
    resources: [secrets]
    resourceNames: [mesh-ca]
    verbs: [get]
  - apiGroups: [\"\"]
    resources: [secrets]
    verbs: [create]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: mesh-control
  namespace: mesh-system
  labels:
{LABELS}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: mesh-control
subjects:
  - kind: ServiceAccount
    name: mesh-control
    namespace: mesh-system
"
    )
}

/// The control plane's Deployment.
pub fn deployment(v: &Values) -> String {
    format!(
        "# The control plane: every replica serves discovery, identity, telemetry
# and the webhook; the holder of the Lease mesh-system/mesh-control writes.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: mesh-control
  namespace: mesh-system
  labels:
{LABELS}
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app.kubernetes.io/name: mesh-control
  template:
    metadata:
      labels:
        app.kubernetes.io/name: mesh-control
        app.kubernetes.io/part-of: mesh
    spec:
      serviceAccountName: mesh-control
      securityContext:
        runAsNonRoot: true
        runAsUser: 65532
        runAsGroup: 65532
        seccompProfile:
          type: RuntimeDefault
      affinity:
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
            - weight: 100
              podAffinityTerm:
                topologyKey: kubernetes.io/hostname
                labelSelector:
                  matchLabels:
                    app.kubernetes.io/name: mesh-control
      containers:
        - name: mesh-control
          image: {image}
          imagePullPolicy: {pull}
          args:
            - --registry=kubernetes
            - --grpc-addr=0.0.0.0:15010
            - --admin-addr=0.0.0.0:15011
            - --http-addr=0.0.0.0:15014
            - --webhook-addr=0.0.0.0:15017
            - --state-dir=/var/run/mesh
            - --namespace=mesh-system
            - --ca-secret=mesh-ca
            - --lease-duration-secs={lease}
          env:
            - name: POD_NAME
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
            - name: MESH_CONTROL_LOG
              value: {log}
          ports:
            - name: grpc
              containerPort: 15010
            - name: admin
              containerPort: 15011
            - name: http
              containerPort: 15014
            - name: webhook
              containerPort: 15017
          readinessProbe:
            httpGet:
              path: /ready
              port: http
            periodSeconds: 5
          livenessProbe:
            httpGet:
              path: /live
              port: http
            periodSeconds: 10
            failureThreshold: 3
          resources:
            requests:
              cpu: {cpu_req}
              memory: {mem_req}
            limits:
              cpu: \"{cpu_lim}\"
              memory: {mem_lim}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            runAsNonRoot: true
            capabilities:
              drop: [ALL]
          volumeMounts:
            - name: state
              mountPath: /var/run/mesh
      volumes:
        # Operator credentials and the rule store; the cluster holds the
        # rules and the CA, so nothing here outlives the pod.
        - name: state
          emptyDir: {{}}
",
        replicas = v.replicas,
        image = v.image,
        pull = v.image_pull_policy,
        lease = v.lease_duration_secs,
        log = v.log_level,
        cpu_req = v.cpu_request,
        mem_req = v.memory_request,
        cpu_lim = v.cpu_limit,
        mem_lim = v.memory_limit,
    )
}

/// The Service sidecars, meshctl and the API server's webhook calls use.
pub fn service() -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: mesh-control
  namespace: mesh-system
  labels:
{LABELS}
spec:
  selector:
    app.kubernetes.io/name: mesh-control
  ports:
    - name: grpc
      port: 15010
      targetPort: grpc
    - name: admin
      port: 15011
      targetPort: admin
    - name: https-webhook
      port: 443
      targetPort: webhook
"
    )
}

/// Keeps one replica up through voluntary disruptions (a node drain).
pub fn pdb(v: &Values) -> String {
    // One replica can never be kept through its own eviction.
    let min = if v.replicas > 1 { 1 } else { 0 };
    format!(
        "apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: mesh-control
  namespace: mesh-system
  labels:
{LABELS}
spec:
  minAvailable: {min}
  selector:
    matchLabels:
      app.kubernetes.io/name: mesh-control
"
    )
}

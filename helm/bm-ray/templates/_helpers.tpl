{{/* Release-scoped name, at most 40 characters so KubeRay's derived names (e.g. -head-svc) stay valid. */}}
{{- define "bm-ray.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels that select every pod of this release (the NetworkPolicies' "own pods"). */}}
{{- define "bm-ray.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "bm-ray.labels" -}}
{{ include "bm-ray.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "bm-ray.claimName" -}}
{{- .Values.storage.pvc.existingClaim | default (printf "%s-storage" (include "bm-ray.fullname" .)) -}}
{{- end -}}

{{/* The image of a node group: repository@digest when a digest is given (immutable), else repository:tag.
Arguments (dict): root, gpu (bool). */}}
{{- define "bm-ray.image" -}}
{{- $i := .root.Values.image -}}
{{- $digest := ternary $i.gpuDigest $i.digest .gpu -}}
{{- if $digest -}}
{{- printf "%s@%s" $i.repository $digest -}}
{{- else -}}
{{- printf "%s:%s" $i.repository (ternary $i.gpuTag $i.tag .gpu) -}}
{{- end -}}
{{- end -}}

{{/* Non-root (high UID), read-only root filesystem, no privilege escalation, no capabilities: every container. */}}
{{- define "bm-ray.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.security.runAsUser }}
runAsGroup: {{ .Values.security.runAsGroup }}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "bm-ray.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.security.runAsUser }}
runAsGroup: {{ .Values.security.runAsGroup }}
fsGroup: {{ .Values.security.runAsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Where a read-only root filesystem still needs writes: /tmp (Ray's session dir /tmp/ray, HOME, caches). */}}
{{- define "bm-ray.writableEnv" -}}
- {name: HOME, value: /tmp/home}
- {name: XDG_CACHE_HOME, value: /tmp/cache}
{{- end -}}

{{/* The object-store credentials: a mounted file (AWS shared-credentials or a GCP key), never env vars. */}}
{{- define "bm-ray.objectStoreEnv" -}}
{{- $o := .Values.storage.objectStore -}}
{{- range $name, $value := $o.env }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- if $o.credentialsSecret }}
- name: {{ $o.credentialsFileEnv }}
  value: /etc/bm-ray/object-store/{{ $o.credentialsKey }}
{{- end }}
{{- end -}}

{{/*
Pod template of one Ray node group. Arguments (dict): root, role (head|worker), component, gpu (bool),
resources, gpus, configMap (name mounted at /etc/bm-ray, or ""), apiKey (bool: mount the endpoint's API key
Secret; only the RayService's worker pods, where the Serve replicas run), nodeSelector, tolerations.
*/}}
{{- define "bm-ray.podTemplate" -}}
{{- $v := .root.Values -}}
metadata:
  labels:
    {{- include "bm-ray.labels" .root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  {{- /* Only the head's autoscaler sidecar talks to the Kubernetes API: its token is mounted into that
  container alone (autoscalerOptions.volumeMounts), so no Ray process holds an API credential. */}}
  automountServiceAccountToken: false
  securityContext:
    {{- include "bm-ray.podSecurityContext" .root | nindent 4 }}
  {{- with $v.image.pullSecrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ . }}
    {{- end }}
  {{- end }}
  {{- with .nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  initContainers:
    {{- /* The writable model cache starts with the presets baked into the image (air-gapped clusters). */}}
    - name: seed-model-cache
      image: {{ include "bm-ray.image" (dict "root" .root "gpu" .gpu) | quote }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      command: [sh, -c, 'mkdir -p /var/cache/bm-ray/models && if [ -d /opt/bm-ray/models ]; then cp -Rn /opt/bm-ray/models/. /var/cache/bm-ray/models/; fi']
      securityContext:
        {{- include "bm-ray.containerSecurityContext" .root | nindent 8 }}
      resources:
        requests: {cpu: 100m, memory: 128Mi}
        limits: {cpu: 500m, memory: 256Mi}
      volumeMounts:
        - {name: model-cache, mountPath: /var/cache/bm-ray}
  containers:
    - name: ray-{{ .role }}
      image: {{ include "bm-ray.image" (dict "root" .root "gpu" .gpu) | quote }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      securityContext:
        {{- include "bm-ray.containerSecurityContext" .root | nindent 8 }}
      ports:
        {{- if eq .role "head" }}
        - {name: gcs-server, containerPort: 6379}
        - {name: dashboard, containerPort: 8265}
        - {name: client, containerPort: 10001}
        {{- end }}
        - {name: serve, containerPort: 8000}
        - {name: metrics, containerPort: 8080}
      env:
        - {name: TF_USE_LEGACY_KERAS, value: "1"}
        - {name: TF_CPP_MIN_LOG_LEVEL, value: "2"}
        - {name: TOKENIZERS_PARALLELISM, value: "false"}
        # Zero-GPU Ray workers see no GPU (bm_ray.runtime.ray_init.WORKER_ENV_VARS): TF in a CPU actor leaves GPU memory alone.
        - {name: RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO, value: "1"}
        - {name: RAY_USAGE_STATS_ENABLED, value: "0"}
        - {name: BM_RAY_OFFLINE, value: {{ ternary "1" "0" $v.offline | quote }}}
        # Serve's throughput mode, keeping the HTTP proxy (bm_ray.runtime.ray_init.SERVE_NODE_ENV_VARS).
        - {name: RAY_SERVE_THROUGHPUT_OPTIMIZED, value: "1"}
        - {name: RAY_SERVE_ENABLE_DIRECT_INGRESS, value: "0"}
        {{- include "bm-ray.writableEnv" .root | nindent 8 }}
        - {name: BM_RAY_CACHE, value: /var/cache/bm-ray/models}
        {{- include "bm-ray.objectStoreEnv" .root | nindent 8 }}
      resources:
        {{- $resources := deepCopy .resources }}
        {{- if .gpus }}
        {{- $_ := set $resources "limits" (merge (dict "nvidia.com/gpu" .gpus) ($resources.limits | default dict)) }}
        {{- end }}
        {{- toYaml $resources | nindent 8 }}
      {{- /* Liveness/readiness: KubeRay injects exec probes into this container when it builds the pod
      (raylet health on every node, GCS health on the head, the Serve proxy on RayService workers), so none
      are set here (a probe set here would replace KubeRay's). */}}
      volumeMounts:
        - {name: dshm, mountPath: /dev/shm}
        - {name: tmp, mountPath: /tmp}
        - {name: model-cache, mountPath: /var/cache/bm-ray}
        {{- if $v.storage.pvc.enabled }}
        - {name: storage, mountPath: /data, subPath: data}
        - {name: storage, mountPath: /models, subPath: models}
        - {name: storage, mountPath: /outputs, subPath: outputs}
        {{- end }}
        {{- if $v.storage.objectStore.credentialsSecret }}
        - {name: object-store-credentials, mountPath: /etc/bm-ray/object-store, readOnly: true}
        {{- end }}
        {{- if .configMap }}
        - {name: spec, mountPath: /etc/bm-ray/spec, readOnly: true}
        {{- end }}
        {{- if .apiKey }}
        - {name: api-key, mountPath: /etc/bm-ray/api-key, readOnly: true}
        {{- end }}
  volumes:
    - name: dshm
      emptyDir: {medium: Memory, sizeLimit: {{ $v.cluster.shmSize }}}
    - name: tmp
      emptyDir: {sizeLimit: {{ $v.cluster.tmpSize }}}
    - name: model-cache
      {{- if $v.modelCache.existingClaim }}
      persistentVolumeClaim:
        claimName: {{ $v.modelCache.existingClaim }}
      {{- else }}
      emptyDir: {sizeLimit: {{ $v.modelCache.sizeLimit }}}
      {{- end }}
    {{- if $v.storage.pvc.enabled }}
    - name: storage
      persistentVolumeClaim:
        claimName: {{ include "bm-ray.claimName" .root }}
    {{- end }}
    {{- with $v.storage.objectStore.credentialsSecret }}
    - name: object-store-credentials
      secret: {secretName: {{ . }}, defaultMode: 0440}
    {{- end }}
    {{- if .configMap }}
    - name: spec
      configMap:
        name: {{ .configMap }}
    {{- end }}
    {{- if .apiKey }}
    - name: api-key
      secret:
        secretName: {{ $v.serve.apiKey.existingSecret }}
        defaultMode: 0440
        items: [{key: {{ $v.serve.apiKey.key }}, path: api-key}]
    {{- end }}
    {{- if eq .role "head" }}
    # The Kubernetes API token of the autoscaler sidecar alone: what automountServiceAccountToken would mount
    # (same sources and 3607 s expiry; Ray's KubeRay node provider re-reads the file as the kubelet rotates it).
    - name: kube-api-access
      projected:
        defaultMode: 0440
        sources:
          - serviceAccountToken: {path: token, expirationSeconds: 3607}
          - configMap:
              name: kube-root-ca.crt
              items: [{key: ca.crt, path: ca.crt}]
          - downwardAPI:
              items: [{path: namespace, fieldRef: {fieldPath: metadata.namespace}}]
    {{- end }}
{{- end -}}

{{/* RayCluster spec shared by the RayCluster, the RayJobs and the RayService.
Arguments: root, component, configMap, apiKey (mount the API key into the worker pods). */}}
{{- define "bm-ray.clusterSpec" -}}
{{- $v := .root.Values -}}
{{- $c := $v.cluster -}}
rayVersion: {{ $v.rayVersion | quote }}
{{- /* Ray token auth: KubeRay puts RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (from the Secret) into every Ray
container and the job submitter, and authenticates its own dashboard calls with it. */}}
authOptions:
  mode: {{ $v.rayAuth.mode }}
  {{- with $v.rayAuth.secretName }}
  secretName: {{ . }}
  {{- end }}
enableInTreeAutoscaling: true
autoscalerOptions:
  idleTimeoutSeconds: {{ $c.idleTimeoutSeconds }}
  upscalingMode: Default
  imagePullPolicy: {{ $v.image.pullPolicy }}
  resources:
    {{- toYaml $c.autoscalerResources | nindent 4 }}
  securityContext:
    {{- include "bm-ray.containerSecurityContext" .root | nindent 4 }}
  # The autoscaler scales worker pods through the Kubernetes API (KubeRay binds it a Role for pods and
  # rayclusters): the only container that gets the service-account token.
  volumeMounts:
    - {name: tmp, mountPath: /tmp}
    - {name: kube-api-access, mountPath: /var/run/secrets/kubernetes.io/serviceaccount, readOnly: true}
headGroupSpec:
  serviceType: {{ $c.head.serviceType }}
  rayStartParams:
    # In-cluster callers (KubeRay, the job submitter) reach the dashboard through the head Service; the
    # NetworkPolicy and token auth decide who may.
    dashboard-host: "0.0.0.0"
    num-cpus: "0"
    metrics-export-port: "8080"
  template:
    {{- include "bm-ray.podTemplate" (dict "root" .root "role" "head" "component" .component "gpu" false "resources" $c.head.resources "gpus" 0 "configMap" .configMap "apiKey" false) | nindent 4 }}
workerGroupSpecs:
  - groupName: cpu
    replicas: {{ $c.cpuWorkers.replicas }}
    minReplicas: {{ $c.cpuWorkers.minReplicas }}
    maxReplicas: {{ $c.cpuWorkers.maxReplicas }}
    rayStartParams:
      metrics-export-port: "8080"
    template:
      {{- include "bm-ray.podTemplate" (dict "root" .root "role" "worker" "component" .component "gpu" false "resources" $c.cpuWorkers.resources "gpus" 0 "configMap" .configMap "apiKey" .apiKey) | nindent 6 }}
  {{- if $c.gpuWorkers.enabled }}
  - groupName: gpu
    replicas: {{ $c.gpuWorkers.replicas }}
    minReplicas: {{ $c.gpuWorkers.minReplicas }}
    maxReplicas: {{ $c.gpuWorkers.maxReplicas }}
    rayStartParams:
      metrics-export-port: "8080"
    template:
      {{- include "bm-ray.podTemplate" (dict "root" .root "role" "worker" "component" .component "gpu" true "resources" $c.gpuWorkers.resources "gpus" $c.gpuWorkers.gpus "configMap" .configMap "apiKey" .apiKey "nodeSelector" $c.gpuWorkers.nodeSelector "tolerations" $c.gpuWorkers.tolerations) | nindent 6 }}
  {{- end }}
{{- end -}}

{{/* ConfigMap holding one spec file plus the RayJob that runs `bm-ray <kind> --spec /etc/bm-ray/spec/<kind>.yaml`.
Arguments: root, kind. */}}
{{- define "bm-ray.rayJob" -}}
{{- $job := index .root.Values .kind -}}
{{- $v := .root.Values -}}
{{- $name := printf "%s-%s" (include "bm-ray.fullname" .root) .kind -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ $name }}-spec
  labels:
    {{- include "bm-ray.labels" .root | nindent 4 }}
data:
  {{ .kind }}.yaml: |
    {{- toYaml $job.spec | nindent 4 }}
---
apiVersion: ray.io/v1
kind: RayJob
metadata:
  name: {{ $name }}
  labels:
    {{- include "bm-ray.labels" .root | nindent 4 }}
spec:
  entrypoint: bm-ray {{ .kind }} --spec /etc/bm-ray/spec/{{ .kind }}.yaml
  shutdownAfterJobFinishes: {{ $job.shutdownAfterJobFinishes }}
  ttlSecondsAfterFinished: {{ $job.ttlSecondsAfterFinished }}
  activeDeadlineSeconds: {{ $job.activeDeadlineSeconds }}
  backoffLimit: {{ $job.backoffLimit }}
  submissionMode: K8sJobMode
  # The submitter pod (`ray job submit` against the head) carries the release's labels, so the NetworkPolicy
  # lets it reach the dashboard; KubeRay fills in its command and the token env vars.
  submitterPodTemplate:
    metadata:
      labels:
        {{- include "bm-ray.labels" .root | nindent 8 }}
        app.kubernetes.io/component: {{ .kind }}-submitter
    spec:
      restartPolicy: Never
      automountServiceAccountToken: false
      securityContext:
        {{- include "bm-ray.podSecurityContext" .root | nindent 8 }}
      {{- with $v.image.pullSecrets }}
      imagePullSecrets:
        {{- range . }}
        - name: {{ . }}
        {{- end }}
      {{- end }}
      containers:
        - name: ray-job-submitter
          image: {{ include "bm-ray.image" (dict "root" .root "gpu" false) | quote }}
          imagePullPolicy: {{ $v.image.pullPolicy }}
          securityContext:
            {{- include "bm-ray.containerSecurityContext" .root | nindent 12 }}
          env:
            {{- include "bm-ray.writableEnv" .root | nindent 12 }}
          resources:
            requests: {cpu: 200m, memory: 256Mi}
            limits: {cpu: "1", memory: 1Gi}
          volumeMounts:
            - {name: tmp, mountPath: /tmp}
      volumes:
        - name: tmp
          emptyDir: {sizeLimit: 1Gi}
  rayClusterSpec:
    {{- include "bm-ray.clusterSpec" (dict "root" .root "component" .kind "configMap" (printf "%s-spec" $name) "apiKey" false) | nindent 4 }}
{{- end -}}

{{/* The largest max_body_bytes of the bm-ray Serve applications (ServeSpec's default where unset). */}}
{{- define "bm-ray.maxBodyBytes" -}}
{{- $max := 0 -}}
{{- range .Values.serve.config.applications -}}
{{- $bytes := int ((.args | default dict).max_body_bytes | default 10485760) -}}
{{- if gt $bytes $max }}{{ $max = $bytes }}{{ end -}}
{{- end -}}
{{- $max -}}
{{- end -}}

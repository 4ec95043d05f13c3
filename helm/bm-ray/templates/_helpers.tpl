{{/* Release-scoped name, at most 40 characters so KubeRay's derived names (e.g. -head-svc) stay valid. */}}
{{- define "bm-ray.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "bm-ray.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "bm-ray.claimName" -}}
{{- .Values.storage.pvc.existingClaim | default (printf "%s-storage" (include "bm-ray.fullname" .)) -}}
{{- end -}}

{{/* Non-root, no privilege escalation, no capabilities: for the Ray containers and the autoscaler. */}}
{{- define "bm-ray.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 100
allowPrivilegeEscalation: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
Pod template of one Ray node group. Arguments (dict): root, role (head|worker), image, resources,
gpus, configMap (name mounted at /etc/bm-ray, or ""), apiKey (bool: inject the serve API key env vars),
nodeSelector, tolerations.
*/}}
{{- define "bm-ray.podTemplate" -}}
{{- $v := .root.Values -}}
metadata:
  labels:
    {{- include "bm-ray.labels" .root | nindent 4 }}
spec:
  securityContext:
    runAsNonRoot: true
    runAsUser: 1000
    runAsGroup: 100
    fsGroup: 100
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
  containers:
    - name: ray-{{ .role }}
      image: {{ printf "%s:%s" $v.image.repository .image | quote }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      securityContext:
        {{- include "bm-ray.containerSecurityContext" . | nindent 8 }}
      {{- if eq .role "head" }}
      ports:
        - {name: gcs-server, containerPort: 6379}
        - {name: dashboard, containerPort: 8265}
        - {name: client, containerPort: 10001}
        - {name: serve, containerPort: 8000}
      {{- end }}
      env:
        - {name: TF_USE_LEGACY_KERAS, value: "1"}
        - {name: TF_CPP_MIN_LOG_LEVEL, value: "2"}
        - {name: TOKENIZERS_PARALLELISM, value: "false"}
        - {name: RAY_USAGE_STATS_ENABLED, value: "0"}
        # Serve's throughput mode, keeping the HTTP proxy (bm_ray.runtime.SERVE_NODE_ENV_VARS).
        - {name: RAY_SERVE_THROUGHPUT_OPTIMIZED, value: "1"}
        - {name: RAY_SERVE_ENABLE_DIRECT_INGRESS, value: "0"}
        {{- range $name, $value := $v.storage.objectStore.env }}
        - name: {{ $name }}
          value: {{ $value | quote }}
        {{- end }}
        {{- if .apiKey }}
        {{- range $v.serve.config.applications }}
        {{- with (.args | default dict).api_key_env }}
        - name: {{ . }}
          valueFrom:
            secretKeyRef:
              name: {{ $v.serve.apiKey.existingSecret }}
              key: {{ $v.serve.apiKey.key }}
        {{- end }}
        {{- end }}
        {{- end }}
      {{- with $v.storage.objectStore.credentialsSecret }}
      envFrom:
        - secretRef:
            name: {{ . }}
      {{- end }}
      resources:
        {{- $resources := deepCopy .resources }}
        {{- if .gpus }}
        {{- $_ := set $resources "limits" (merge (dict "nvidia.com/gpu" .gpus) ($resources.limits | default dict)) }}
        {{- end }}
        {{- toYaml $resources | nindent 8 }}
      volumeMounts:
        - {name: dshm, mountPath: /dev/shm}
        - {name: ray-tmp, mountPath: /tmp/ray}
        {{- if $v.storage.pvc.enabled }}
        - {name: storage, mountPath: /data, subPath: data}
        - {name: storage, mountPath: /models, subPath: models}
        - {name: storage, mountPath: /outputs, subPath: outputs}
        {{- end }}
        {{- if .configMap }}
        - {name: spec, mountPath: /etc/bm-ray, readOnly: true}
        {{- end }}
  volumes:
    - name: dshm
      emptyDir: {medium: Memory, sizeLimit: {{ $v.cluster.shmSize }}}
    - name: ray-tmp
      emptyDir: {}
    {{- if $v.storage.pvc.enabled }}
    - name: storage
      persistentVolumeClaim:
        claimName: {{ include "bm-ray.claimName" .root }}
    {{- end }}
    {{- if .configMap }}
    - name: spec
      configMap:
        name: {{ .configMap }}
    {{- end }}
{{- end -}}

{{/* RayCluster spec shared by the RayCluster, the RayJobs and the RayService. Arguments: root, configMap, apiKey. */}}
{{- define "bm-ray.clusterSpec" -}}
{{- $v := .root.Values -}}
{{- $c := $v.cluster -}}
rayVersion: {{ $v.rayVersion | quote }}
enableInTreeAutoscaling: true
autoscalerOptions:
  idleTimeoutSeconds: {{ $c.idleTimeoutSeconds }}
  upscalingMode: Default
  securityContext:
    {{- include "bm-ray.containerSecurityContext" . | nindent 4 }}
headGroupSpec:
  serviceType: {{ $c.head.serviceType }}
  rayStartParams:
    dashboard-host: "0.0.0.0"
    num-cpus: "0"
  template:
    {{- include "bm-ray.podTemplate" (dict "root" .root "role" "head" "image" $v.image.tag "resources" $c.head.resources "gpus" 0 "configMap" .configMap "apiKey" .apiKey) | nindent 4 }}
workerGroupSpecs:
  - groupName: cpu
    replicas: {{ $c.cpuWorkers.replicas }}
    minReplicas: {{ $c.cpuWorkers.minReplicas }}
    maxReplicas: {{ $c.cpuWorkers.maxReplicas }}
    rayStartParams: {}
    template:
      {{- include "bm-ray.podTemplate" (dict "root" .root "role" "worker" "image" $v.image.tag "resources" $c.cpuWorkers.resources "gpus" 0 "configMap" .configMap "apiKey" .apiKey) | nindent 6 }}
  {{- if $c.gpuWorkers.enabled }}
  - groupName: gpu
    replicas: {{ $c.gpuWorkers.replicas }}
    minReplicas: {{ $c.gpuWorkers.minReplicas }}
    maxReplicas: {{ $c.gpuWorkers.maxReplicas }}
    rayStartParams: {}
    template:
      {{- include "bm-ray.podTemplate" (dict "root" .root "role" "worker" "image" $v.image.gpuTag "resources" $c.gpuWorkers.resources "gpus" $c.gpuWorkers.gpus "configMap" .configMap "apiKey" .apiKey "nodeSelector" $c.gpuWorkers.nodeSelector "tolerations" $c.gpuWorkers.tolerations) | nindent 6 }}
  {{- end }}
{{- end -}}

{{/* ConfigMap holding one spec file plus the RayJob that runs `bm-ray <kind> --spec /etc/bm-ray/<kind>.yaml`. Arguments: root, kind. */}}
{{- define "bm-ray.rayJob" -}}
{{- $job := index .root.Values .kind -}}
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
  entrypoint: bm-ray {{ .kind }} --spec /etc/bm-ray/{{ .kind }}.yaml
  shutdownAfterJobFinishes: {{ $job.shutdownAfterJobFinishes }}
  ttlSecondsAfterFinished: {{ $job.ttlSecondsAfterFinished }}
  activeDeadlineSeconds: {{ $job.activeDeadlineSeconds }}
  backoffLimit: {{ $job.backoffLimit }}
  rayClusterSpec:
    {{- include "bm-ray.clusterSpec" (dict "root" .root "configMap" (printf "%s-spec" $name) "apiKey" false) | nindent 4 }}
{{- end -}}

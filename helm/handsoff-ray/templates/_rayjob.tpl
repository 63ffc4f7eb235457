{{/*
The RayJob spec, shared by the install-time RayJob, the CronJob launcher's template and the RayCronJob.
Call with (dict "root" $ "env" (dict ...) "forceDeletionRules" bool):
  env                 variables added to runtimeEnvYAML.env_vars (they reach the driver on the head)
  forceDeletionRules  RayCronJob children must delete themselves, whatever rayJob.cleanup.mode says
*/}}
{{- define "handsoff-ray.rayJobSpec" -}}
{{- $ := .root }}
{{- $v := $.Values }}
{{- $re := deepCopy $v.rayJob.runtimeEnv }}
{{- $envVars := merge (deepCopy .env) (default (dict) $re.env_vars) }}
{{- if $envVars }}{{- $_ := set $re "env_vars" $envVars }}{{- end }}
entrypoint: {{ printf "python /opt/handsoff/jobs/entrypoint.py %s/etc/handsoff/spec.yaml%s" (ternary "--train-gan " "" (eq $v.rayJob.command "train-gan")) (include "handsoff-ray.extraArgs" $) | quote }}
{{- with $re }}
runtimeEnvYAML: |
  {{- toYaml . | nindent 2 }}
{{- end }}
submissionMode: K8sJobMode
backoffLimit: {{ $v.rayJob.backoffLimit }}
submitterConfig:
  backoffLimit: {{ $v.rayJob.submitterBackoffLimit }}
{{- with $v.rayJob.activeDeadlineSeconds }}
activeDeadlineSeconds: {{ . }}
{{- end }}
{{- with $v.rayJob.preRunningDeadlineSeconds }}
preRunningDeadlineSeconds: {{ . }}
{{- end }}
{{- $c := $v.rayJob.cleanup }}
{{- if or (eq $c.mode "deletionRules") .forceDeletionRules }}
deletionStrategy:
  deletionRules:
    {{- range $status := list "SUCCEEDED" "FAILED" }}
    - policy: DeleteWorkers
      condition: {jobStatus: {{ $status }}, ttlSeconds: {{ $c.deleteWorkersAfterSeconds }}}
    - policy: DeleteCluster
      condition: {jobStatus: {{ $status }}, ttlSeconds: {{ $c.deleteClusterAfterSeconds }}}
    - policy: DeleteSelf
      condition: {jobStatus: {{ $status }}, ttlSeconds: {{ $c.deleteSelfAfterSeconds }}}
    {{- end }}
{{- else }}
shutdownAfterJobFinishes: true
ttlSecondsAfterFinished: {{ $c.ttlSecondsAfterFinished }}
{{- end }}
submitterPodTemplate:
  metadata:
    labels: {{- include "handsoff-ray.selectorLabels" $ | nindent 6 }}
      app.kubernetes.io/component: submitter
  spec:
    restartPolicy: Never
    serviceAccountName: {{ include "handsoff-ray.serviceAccountName" $ }}
    securityContext: {{- toYaml $v.podSecurityContext | nindent 6 }}
    {{- with $v.imagePullSecrets }}
    imagePullSecrets: {{- toYaml . | nindent 6 }}
    {{- end }}
    containers:
      - name: ray-job-submitter
        image: {{ include "handsoff-ray.image" $ }}
        imagePullPolicy: {{ $v.image.pullPolicy }}
        securityContext: {{- toYaml $v.securityContext | nindent 10 }}
        resources: {{- toYaml $v.rayJob.submitterResources | nindent 10 }}
rayClusterSpec:
  rayVersion: {{ $v.rayVersion | quote }}
  {{- if $v.autoscaling.enabled }}
  enableInTreeAutoscaling: true
  autoscalerOptions:
    version: v2
    idleTimeoutSeconds: {{ $v.autoscaling.idleTimeoutSeconds }}
    securityContext: {{- toYaml $v.securityContext | nindent 6 }}
    resources:
      requests: {cpu: 200m, memory: 512Mi}
      limits: {cpu: 500m, memory: 512Mi}
  {{- end }}
  headGroupSpec:
    rayStartParams: {{- toYaml (merge (dict "metrics-export-port" "8080") $v.head.rayStartParams) | nindent 6 }}
    template:
      metadata:
        labels: {{- include "handsoff-ray.selectorLabels" $ | nindent 10 }}
      spec:
        {{- include "handsoff-ray.podCommon" (dict "root" $ "group" $v.head) | nindent 8 }}
        containers:
          - name: ray-head
            image: {{ include "handsoff-ray.image" $ }}
            imagePullPolicy: {{ $v.image.pullPolicy }}
            securityContext: {{- toYaml $v.securityContext | nindent 14 }}
            resources: {{- toYaml $v.head.resources | nindent 14 }}
            ports:
              - {name: gcs-server, containerPort: 6379}
              - {name: dashboard, containerPort: 8265}
              - {name: client, containerPort: 10001}
              - {name: metrics, containerPort: 8080}
              - {name: driver-metrics, containerPort: {{ $v.monitoring.driverMetricsPort }}}
            env:
              - {name: HANDSOFF_DRIVER_METRICS_PORT, value: {{ $v.monitoring.driverMetricsPort | quote }}}
              {{- with $v.monitoring.pushgateway }}
              - {name: HANDSOFF_PUSHGATEWAY, value: {{ . | quote }}}
              {{- end }}
              {{- include "handsoff-ray.storageEnv" $ | nindent 14 }}
            {{- include "handsoff-ray.envFrom" $ | nindent 12 }}
            volumeMounts:
              - {name: jobspec, mountPath: /etc/handsoff, readOnly: true}
              - {name: ray-logs, mountPath: /tmp/ray}
        volumes:
          - name: jobspec
            configMap: {name: {{ include "handsoff-ray.fullname" $ }}-spec}
          - name: ray-logs
            emptyDir: {}
  workerGroupSpecs:
    {{- range $v.workerGroups }}
    - groupName: {{ .name }}
      replicas: {{ .replicas }}
      minReplicas: {{ .minReplicas }}
      maxReplicas: {{ .maxReplicas }}
      rayStartParams: {{- toYaml (merge (dict "metrics-export-port" "8080") (default (dict) .rayStartParams)) | nindent 8 }}
      template:
        metadata:
          labels: {{- include "handsoff-ray.selectorLabels" $ | nindent 12 }}
        spec:
          {{- include "handsoff-ray.podCommon" (dict "root" $ "group" .) | nindent 10 }}
          containers:
            - name: ray-worker
              image: {{ include "handsoff-ray.image" $ }}
              imagePullPolicy: {{ $v.image.pullPolicy }}
              securityContext: {{- toYaml $v.securityContext | nindent 16 }}
              {{- $res := deepCopy .resources }}
              {{- if .gpus }}
              {{- $_ := set $res.limits "nvidia.com/gpu" (toString .gpus) }}
              {{- $_ := set $res.requests "nvidia.com/gpu" (toString .gpus) }}
              {{- end }}
              resources: {{- toYaml $res | nindent 16 }}
              ports:
                - {name: metrics, containerPort: 8080}
              {{- $env := include "handsoff-ray.storageEnv" $ }}
              {{- if $env }}
              env: {{- $env | nindent 16 }}
              {{- end }}
              {{- include "handsoff-ray.envFrom" $ | nindent 14 }}
              volumeMounts:
                - {name: ray-logs, mountPath: /tmp/ray}
          volumes:
            - name: ray-logs
              emptyDir: {}
    {{- end }}
{{- end }}

{{/* Pod-level fields shared by head and workers. */}}
{{- define "handsoff-ray.podCommon" -}}
{{- $v := .root.Values -}}
serviceAccountName: {{ include "handsoff-ray.serviceAccountName" .root }}
securityContext: {{- toYaml $v.podSecurityContext | nindent 2 }}
{{- with $v.imagePullSecrets }}
imagePullSecrets: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .group.nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .group.tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .group.affinity }}
affinity: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "handsoff-ray.extraArgs" -}}
{{- range .Values.rayJob.extraArgs }} {{ . }}{{- end }}
{{- end }}

{{/*
Naming. KubeRay derives pod and service names from its objects and refuses long ones:
RayJob <= 47 characters, RayCronJob <= 36 (its child RayJobs are "<name>-<unix minute>"), RayCluster <= 53.
The full name is the RayJob name, so it is truncated to 47, not Kubernetes' usual 63.
*/}}
{{- define "handsoff-ray.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 47 | trimSuffix "-" }}
{{- end }}

{{- define "handsoff-ray.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 47 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 47 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 47 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The RayCronJob name: 36 characters at most. */}}
{{- define "handsoff-ray.cronName" -}}
{{- include "handsoff-ray.fullname" . | trunc 36 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of RayJobs the CronJob launcher creates: "<prefix>-<YYYYmmddHHMM>" must fit in 47. */}}
{{- define "handsoff-ray.launchPrefix" -}}
{{- include "handsoff-ray.fullname" . | trunc 34 | trimSuffix "-" }}
{{- end }}

{{- define "handsoff-ray.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "handsoff-ray.selectorLabels" -}}
app.kubernetes.io/name: {{ include "handsoff-ray.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "handsoff-ray.labels" -}}
helm.sh/chart: {{ include "handsoff-ray.chart" . }}
{{ include "handsoff-ray.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: handsoff-ray
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "handsoff-ray.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "handsoff-ray.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "handsoff-ray.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/*
Object-store credentials: envFrom an existing Secret and/or single secretKeyRefs, plus plain variables.
Only references to Secrets are rendered; no secret value ever passes through values.yaml.
*/}}
{{- define "handsoff-ray.storageEnv" -}}
{{- range .Values.objectStore.secretKeyRefs }}
- name: {{ .env }}
  valueFrom:
    secretKeyRef: {name: {{ .secretName | quote }}, key: {{ .key | quote }}}
{{- end }}
{{- range $k, $v := .Values.objectStore.env }}
- name: {{ $k }}
  value: {{ $v | quote }}
{{- end }}
{{- end }}

{{- define "handsoff-ray.envFrom" -}}
{{- with .Values.objectStore.existingSecret }}
envFrom:
  - secretRef: {name: {{ . | quote }}}
{{- end }}
{{- end }}

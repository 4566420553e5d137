{{/* Names and labels of the orchestrator release. */}}

{{- define "tandem-orchestrator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release name, with "-orchestrator" added unless it already says so. */}}
{{- define "tandem-orchestrator.fullname" -}}
{{- if contains "orchestrator" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-orchestrator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tandem-orchestrator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tandem-orchestrator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tandem-orchestrator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tandem-orchestrator.labels" -}}
{{ include "tandem-orchestrator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: orchestrator
app.kubernetes.io/part-of: tandem
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "tandem-orchestrator.chart" . }}
{{- end -}}

{{/* The serving pods (prefill and decode) of this model, as the orchestrator selects them. */}}
{{- define "tandem-orchestrator.podSelector" -}}
{{- printf "llm-d.ai/inference-serving=true,llm-d.ai/model=%s" .Values.servingName -}}
{{- end -}}

{{- define "tandem-orchestrator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "tandem-orchestrator.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{- define "tandem-orchestrator.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

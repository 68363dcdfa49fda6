{{/* The webhook's name: its Deployment, Service, ServiceAccount, Certificate. */}}
{{- define "klock.fullname" -}}
{{- printf "%s-webhook" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "klock.labels" -}}
app.kubernetes.io/name: klock-webhook
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "klock.selectorLabels" -}}
app.kubernetes.io/name: klock-webhook
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "klock.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "klock.tlsSecret" -}}
{{- if eq .Values.tls.mode "secret" -}}
{{- required "tls.secret.name is required with tls.mode=secret" .Values.tls.secret.name -}}
{{- else -}}
{{- printf "%s-tls" (include "klock.fullname" .) -}}
{{- end -}}
{{- end -}}

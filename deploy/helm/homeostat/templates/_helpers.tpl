{{- define "homeostat.fullname" -}}
{{- printf "%s" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "homeostat.labels" -}}
app.kubernetes.io/name: homeostat
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "homeostat.selector" -}}
app.kubernetes.io/name: homeostat
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "homeostat.serviceAccount" -}}
{{- default (include "homeostat.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* The chart's name. */}}
{{- define "broker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name of the release's resources. */}}
{{- define "broker.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "broker.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels. */}}
{{- define "broker.labels" -}}
helm.sh/chart: {{ include "broker.chart" . }}
{{ include "broker.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: token-broker
{{- end }}

{{- define "broker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "broker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "broker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "broker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* A TOML value: maps become inline tables, everything else JSON (valid TOML for
strings, numbers, booleans and arrays of them). Keys go from camelCase to snake_case. */}}
{{- define "broker.tomlValue" -}}
{{- if kindIs "map" . -}}
{ {{- $first := true -}}
{{- range $key, $value := . -}}
{{- if not $first }}, {{ end }}{{ $first = false }}{{ snakecase $key }} = {{ include "broker.tomlValue" $value }}
{{- end -}} }
{{- else -}}
{{- toJson . -}}
{{- end -}}
{{- end }}

{{/* The key = value lines of a map. */}}
{{- define "broker.tomlTable" -}}
{{- range $key, $value := . }}
{{ snakecase $key }} = {{ include "broker.tomlValue" $value }}
{{- end }}
{{- end }}

{{/* Array-of-tables entries such as [[clients]]. */}}
{{- define "broker.tomlArray" -}}
{{- $name := index . 0 }}
{{- range index . 1 }}

[[{{ $name }}]]
{{- include "broker.tomlTable" . }}
{{- end }}
{{- end }}

{{- define "broker.auditDir" -}}/var/lib/mka1-token-broker/audit{{- end }}

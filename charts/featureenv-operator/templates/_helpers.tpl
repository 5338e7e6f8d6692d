{{/* Names, labels and small helpers shared by the templates. */}}

{{- define "featureenv-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "featureenv-operator.fullname" -}}
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

{{- define "featureenv-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "featureenv-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "featureenv-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- /*
Labels of every object, with the component it belongs to. `operator` marks what the
operator itself runs with (its Deployment, ServiceAccount and RBAC): hack/render_chart.py
selects the operator's RBAC by it, and the end-to-end RBAC proof demands that the
operator uses every rule so marked. Roles for people (`user-rbac`) and the admission
policy (`admission`) carry their own component.
*/ -}}
{{- define "featureenv-operator.componentLabels" -}}
helm.sh/chart: {{ include "featureenv-operator.chart" .root }}
{{ include "featureenv-operator.selectorLabels" .root }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "featureenv-operator.labels" -}}
{{ include "featureenv-operator.componentLabels" (dict "root" . "component" "operator") }}
{{- end }}

{{- define "featureenv-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "featureenv-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "featureenv-operator.clusterId" -}}
{{- required "clusterId is required: it is the featureenv.io/cluster tag this installation writes on (and the janitor trusts on) every AWS resource it owns, e.g. --set clusterId=prod-eu1" .Values.clusterId }}
{{- end }}

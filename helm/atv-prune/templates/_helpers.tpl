{{/*
Names, labels and the pieces the coordinator and the workers share (image references, the shared
volume, TLS). Labels follow app.kubernetes.io/*; selector labels never change across upgrades
(name, instance, component), everything else may.
*/}}

{{/* Chart name, or nameOverride. */}}
{{- define "atv-prune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* RELEASE-CHART (or RELEASE when it already contains the chart name), or fullnameOverride. */}}
{{- define "atv-prune.fullname" -}}
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

{{/* CHART-VERSION for the helm.sh/chart label. */}}
{{- define "atv-prune.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "atv-prune.labels" -}}
helm.sh/chart: {{ include "atv-prune.chart" . }}
{{ include "atv-prune.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/part-of: atv-prune
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that identify this release's objects. */}}
{{- define "atv-prune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "atv-prune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Coordinator: name (a Deployment and its Service), labels, selector labels. */}}
{{- define "atv-prune.coordinator.fullname" -}}
{{- printf "%s-coordinator" (include "atv-prune.fullname" . | trunc 51 | trimSuffix "-") }}
{{- end }}

{{- define "atv-prune.coordinator.labels" -}}
{{ include "atv-prune.labels" . }}
app.kubernetes.io/component: coordinator
{{- end }}

{{- define "atv-prune.coordinator.selectorLabels" -}}
{{ include "atv-prune.selectorLabels" . }}
app.kubernetes.io/component: coordinator
{{- end }}

{{/* Workers: name (the StatefulSet and its headless Service; pod names add "-N" and the
controller-revision-hash label needs room, hence the shorter cut), labels, selector labels. */}}
{{- define "atv-prune.worker.fullname" -}}
{{- printf "%s-worker" (include "atv-prune.fullname" . | trunc 45 | trimSuffix "-") }}
{{- end }}

{{- define "atv-prune.worker.labels" -}}
{{ include "atv-prune.labels" . }}
app.kubernetes.io/component: worker
{{- end }}

{{- define "atv-prune.worker.selectorLabels" -}}
{{ include "atv-prune.selectorLabels" . }}
app.kubernetes.io/component: worker
{{- end }}

{{/* The worker selector labels as a label selector string (keys in sorted order), which the
coordinator uses to find worker pods through the Kubernetes API. */}}
{{- define "atv-prune.worker.selector" -}}
{{- $pairs := list }}
{{- range $key, $value := (include "atv-prune.worker.selectorLabels" . | fromYaml) }}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{/* The coordinator's ServiceAccount. */}}
{{- define "atv-prune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "atv-prune.coordinator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The claim of the shared volume. */}}
{{- define "atv-prune.claimName" -}}
{{- if .Values.storage.existingClaim }}
{{- .Values.storage.existingClaim }}
{{- else }}
{{- printf "%s-data" (include "atv-prune.fullname" . | trunc 58 | trimSuffix "-") }}
{{- end }}
{{- end }}

{{/* A folder under the shared volume's mount path: (list ROOT "sub/dir"). */}}
{{- define "atv-prune.underMount" -}}
{{- clean (printf "%s/%s" (index . 0).Values.storage.mountPath (index . 1)) }}
{{- end }}

{{/* An image reference: (dict "image" .Values.x.image "root" $). The tag defaults to the appVersion. */}}
{{- define "atv-prune.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag | toString) }}
{{- end }}

{{/* Where the TLS Secret is mounted. */}}
{{- define "atv-prune.tlsDir" -}}
/etc/atvp/tls
{{- end }}

{{/* The Secret holding tls.crt, tls.key and ca.crt: tls.secretName, or the one cert-manager fills. */}}
{{- define "atv-prune.tlsSecretName" -}}
{{- if .Values.tls.secretName }}
{{- .Values.tls.secretName }}
{{- else if .Values.tls.certManager.enabled }}
{{- printf "%s-tls" (include "atv-prune.fullname" . | trunc 59 | trimSuffix "-") }}
{{- end }}
{{- end }}

{{/* The name worker certificates carry (workers are dialled by pod IP): tls.workerServerName, or
the worker Service's name in the certificate cert-manager issues; empty: the address itself. */}}
{{- define "atv-prune.workerServerName" -}}
{{- if .Values.tls.workerServerName }}
{{- .Values.tls.workerServerName }}
{{- else if .Values.tls.certManager.enabled }}
{{- printf "%s.%s.svc" (include "atv-prune.worker.fullname" .) .Release.Namespace }}
{{- end }}
{{- end }}

{{/* Where the NATS .creds Secret is mounted. */}}
{{- define "atv-prune.natsCredsDir" -}}
/etc/atvp/nats
{{- end }}

{{/* Values that a schema cannot check. */}}
{{- define "atv-prune.validate" -}}
{{- if and .Values.worker.autoscaling.enabled (gt (int .Values.worker.autoscaling.minReplicas) (int .Values.worker.autoscaling.maxReplicas)) }}
{{- fail (printf "worker.autoscaling.minReplicas (%v) must not exceed worker.autoscaling.maxReplicas (%v)" .Values.worker.autoscaling.minReplicas .Values.worker.autoscaling.maxReplicas) }}
{{- end }}
{{- $pdb := .Values.worker.podDisruptionBudget }}
{{- if and $pdb.enabled (kindIs "invalid" $pdb.minAvailable) (kindIs "invalid" $pdb.maxUnavailable) }}
{{- fail "worker.podDisruptionBudget.enabled needs minAvailable or maxUnavailable" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) (not .Values.tls.certManager.enabled) }}
{{- fail "tls.enabled needs tls.secretName (a Secret with tls.crt, tls.key and ca.crt) or tls.certManager.enabled" }}
{{- end }}
{{- if and .Values.tls.certManager.enabled (not .Values.tls.enabled) }}
{{- fail "tls.certManager.enabled needs tls.enabled: the certificate is for the services' TLS" }}
{{- end }}
{{- if and .Values.tls.certManager.enabled (not .Values.tls.certManager.issuerRef.name) }}
{{- fail "tls.certManager.enabled needs tls.certManager.issuerRef.name (a CA Issuer or ClusterIssuer)" }}
{{- end }}
{{- end }}

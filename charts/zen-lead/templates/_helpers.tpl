{{/* Chart name, possibly overridden. */}}
{{- define "zen-lead.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every resource name. */}}
{{- define "zen-lead.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "zen-lead.selectorLabels" -}}
app.kubernetes.io/name: {{ include "zen-lead.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "zen-lead.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "zen-lead.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "zen-lead.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "zen-lead.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "zen-lead.webhookService" -}}
{{- printf "%s-webhook" (include "zen-lead.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "zen-lead.webhookConfigName" -}}
{{- default (include "zen-lead.fullname" .) .Values.webhook.configName -}}
{{- end -}}

{{- define "zen-lead.tlsSecret" -}}
{{- default (printf "%s-webhook-tls" (include "zen-lead.fullname" .)) .Values.tls.secretName -}}
{{- end -}}

{{- define "zen-lead.certificateName" -}}
{{- printf "%s-webhook" (include "zen-lead.fullname" .) -}}
{{- end -}}

{{- define "zen-lead.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "zen-lead.agentImage" -}}
{{- $repo := default .Values.image.repository .Values.agent.image.repository -}}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) .Values.agent.image.tag -}}
{{- if and (not .Values.agent.image.repository) (not .Values.agent.image.tag) .Values.image.digest -}}
{{- printf "%s@%s" $repo .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}
{{- end -}}

{{/* The CLI's name for the TLS mode. */}}
{{- define "zen-lead.cliTlsMode" -}}
{{- if eq .Values.tls.mode "selfManaged" -}}self-managed{{- else -}}files{{- end -}}
{{- end -}}

{{/* namespaceSelector shared by both webhook entries. */}}
{{- define "zen-lead.webhookNamespaceSelector" -}}
{{- with .Values.webhook.namespaceSelector.matchLabels }}
matchLabels:
  {{- toYaml . | nindent 2 }}
{{- end }}
matchExpressions:
  - key: kubernetes.io/metadata.name
    operator: NotIn
    values:
      {{- range (append .Values.webhook.excludeNamespaces .Release.Namespace | uniq) }}
      - {{ . | quote }}
      {{- end }}
  {{- with .Values.webhook.namespaceSelector.matchExpressions }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}

{{- define "zen-lead.fencingPolicyName" -}}
{{- printf "%s-fencing" (include "zen-lead.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "zen-lead.injectionGuardName" -}}
{{- printf "%s-require-agent" (include "zen-lead.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "zen-lead.rbacGuardName" -}}
{{- printf "%s-controller-rbac" (include "zen-lead.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

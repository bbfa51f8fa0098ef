{{/* Names and labels shared by every template. */}}

{{- define "apwa.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "apwa.fullname" -}}
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

{{- define "apwa.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "apwa.selectorLabels" -}}
app.kubernetes.io/name: {{ include "apwa.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "apwa.labels" -}}
helm.sh/chart: {{ include "apwa.chart" . }}
{{ include "apwa.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: apwa
{{- end }}

{{- define "apwa.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "apwa.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "apwa.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The namespaced permissions, exactly what the operator's code uses (tests/integration/test_rbac.py
holds the same list with the code each rule serves, and fails on any difference):
- parallelworkloads: list/watch (kopf's watch), delete (spec.ttlSecondsAfterFinished);
  status: patch (the status writer); finalizers: update, because children carry ownerReferences
  with blockOwnerDeletion, which the OwnerReferencesPermissionEnforcement admission plugin checks.
- jobs: create (subtasks, reduce), get (a Job that already exists), list (re-seeding after a
  restart), watch (kopf), patch (TTL after the outcome is stored, suspend/resume).
- pods: list (re-seeding), watch (kopf): results travel in the pods' termination messages;
  patch: removing the apwa.dev/result finalizer once a pod's outcome is stored (no update, no delete).
- configmaps: create/update (result chunks, reduce input), get (configMapRef plans), list (load).
- networkpolicies: create (one isolation policy per workload).
- events: create (the operator's and kopf's events on the workload).
- secrets: get, only the Secrets named in rbac.secretNames (and its older name
  rbac.plannerSecretNames): planner API keys (spec.decomposition.planner.apiKeySecretRef) and
  object store credentials (spec.store.s3.credentialsSecret); none by default.
*/}}
{{- define "apwa.namespacedRules" -}}
- apiGroups: ["apwa.dev"]
  resources: ["parallelworkloads"]
  verbs: ["list", "watch", "delete"]
- apiGroups: ["apwa.dev"]
  resources: ["parallelworkloads/status"]
  verbs: ["patch"]
- apiGroups: ["apwa.dev"]
  resources: ["parallelworkloads/finalizers"]
  verbs: ["update"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["create", "get", "list", "watch", "patch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch", "patch"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["create", "get", "list", "update"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["create"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if .Values.rbac.kueue }}
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["list", "patch"]
{{- end }}
{{- with (concat .Values.rbac.secretNames .Values.rbac.plannerSecretNames | uniq) }}
- apiGroups: [""]
  resources: ["secrets"]
  resourceNames: {{ toJson . }}
  verbs: ["get"]
{{- end }}
{{- end }}

{{/* kopf follows CRDs (to notice the watched resource appearing) in every mode. */}}
{{- define "apwa.crdDiscoveryRule" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- end }}

{{/* Only when not cluster-wide: kopf lists and watches namespaces to match its namespace list. */}}
{{- define "apwa.namespaceDiscoveryRule" -}}
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}

{{/*
The PromQL label matchers that select this release's operator series in Prometheus: by default
the job and namespace labels that the chart's ServiceMonitor gives them (job is the Service's name).
*/}}
{{- define "apwa.metricsSelector" -}}
{{- if .Values.prometheusRule.selector }}
{{- .Values.prometheusRule.selector }}
{{- else }}
{{- printf "job=%q,namespace=%q" (printf "%s-metrics" (include "apwa.fullname" .)) .Release.Namespace }}
{{- end }}
{{- end }}

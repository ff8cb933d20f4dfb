{{/*
Naming, labels, and the per-service building blocks every template shares. Templates range over
.Values.services; what is fixed about a service (its env prefix, protocol, peers, whether it uses Kafka or a
database) lives in "tollgate.catalog" below, because it is a fact of the code, not an operator's choice.
*/}}

{{- define "tollgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "<release>-tollgate", or just the release name when it already contains the chart name. */}}
{{- define "tollgate.fullname" -}}
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

{{- define "tollgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Name of one service's objects (Deployment, Service, …): "<fullname>-<service>". Args: root, name. */}}
{{- define "tollgate.componentName" -}}
{{- printf "%s-%s" (include "tollgate.fullname" .root) .name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Args: root, name (the service; omit for release-wide objects). */}}
{{- define "tollgate.labels" -}}
helm.sh/chart: {{ include "tollgate.chart" .root }}
{{ include "tollgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: tollgate
{{- end }}

{{- define "tollgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tollgate.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- if .name }}
app.kubernetes.io/component: {{ .name }}
{{- end }}
{{- end }}

{{- define "tollgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tollgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
What the code fixes about each service (docs/architecture.md): the env prefix, the protocol and the port variable,
the peers it dials (env suffix → service), whether it reads Kafka, the name of its database URL variable, and the
gRPC service its health check reports on.
*/}}
{{- define "tollgate.catalog" -}}
ingress:
  prefix: INGRESS
  protocol: http
  hostEnv: HOST
  portEnv: PORT
  metricsEnv: METRICS_PORT
  kafka: true
  databaseEnv: OUTBOX_DATABASE_URL
  sqliteFile: ingress-outbox.db
  peers:
    BILLING_ADDR: billing
    POLICY_ADDR: policy
    ROUTER_ADDR: router
    # GetUsageReport, for the usage analytics routes.
    METERING_ADDR: metering
  # Who may connect (NetworkPolicy); ingress's callers are `networkPolicy.ingressFrom`.
  callers: []
  # Egress beyond its peers, Kafka, DNS and telemetry: its database (the outbox).
  database: true
router:
  prefix: ROUTER
  protocol: grpc
  hostEnv: GRPC_HOST
  portEnv: GRPC_PORT
  metricsEnv: METRICS_PORT
  # Publishes AttemptRecorded to tollgate.attempts.v1 from its outbox.
  kafka: true
  databaseEnv: ""
  # The attempt outbox: SQLite under /app/var (its default ROUTER_DATABASE_URL) on an emptyDir.
  localVar: true
  # GetPriceBook at start: every routable model must be priced (ROUTER_PRICE_CHECK).
  peers:
    METERING_ADDR: metering
  callers: [ingress]
  database: false
  # Egress to the model providers (`networkPolicy.egress.providers`).
  providers: true
policy:
  prefix: POLICY
  protocol: grpc
  hostEnv: GRPC_HOST
  portEnv: GRPC_PORT
  metricsEnv: METRICS_PORT
  kafka: true
  databaseEnv: DATABASE_URL
  sqliteFile: policy.db
  peers: {}
  callers: [ingress]
  database: true
billing:
  prefix: BILLING
  protocol: grpc
  hostEnv: GRPC_HOST
  portEnv: GRPC_PORT
  metricsEnv: METRICS_PORT
  kafka: true
  databaseEnv: DATABASE_URL
  sqliteFile: billing.db
  peers:
    METERING_ADDR: metering
  callers: [ingress]
  database: true
metering:
  prefix: METERING
  protocol: grpc
  hostEnv: GRPC_HOST
  portEnv: GRPC_PORT
  metricsEnv: METRICS_PORT
  kafka: true
  databaseEnv: DATABASE_URL
  sqliteFile: metering.db
  peers: {}
  # GetPriceBook (billing, router, ops), GetUsageSummary and GetUsageReport (ingress, ops): docs/architecture.md
  # "Internal authentication".
  callers: [billing, ingress, router, ops]
  database: true
{{- end }}

{{/* The catalog entry of one service, as YAML. Args: root, name. Fails on a service the chart does not know. */}}
{{- define "tollgate.facts" -}}
{{- $catalog := include "tollgate.catalog" . | fromYaml }}
{{- if not (hasKey $catalog .name) }}
{{- fail (printf "services.%s: unknown service (expected one of %s)" .name (keys $catalog | sortAlpha | join ", ")) }}
{{- end }}
{{- get $catalog .name | toYaml }}
{{- end }}

{{/*
One service's effective settings, as YAML: the top-level defaults overlaid key by key with services.<name>.
Args: root, name.
*/}}
{{- define "tollgate.settings" -}}
{{- $v := .root.Values }}
{{- $svc := get $v.services .name | default dict }}
{{- $out := deepCopy $svc }}
{{- range $key := list "resources" "nodeSelector" "podAnnotations" "podLabels" }}
{{- $_ := set $out $key (mergeOverwrite (deepCopy (get $v $key | default dict)) (deepCopy (get $svc $key | default dict))) }}
{{- end }}
{{- range $key := list "affinity" "tolerations" "topologySpreadConstraints" }}
{{- $_ := set $out $key (get $svc $key | default (get $v $key)) }}
{{- end }}
{{- /* Flat maps are overlaid by hand: mergeOverwrite would ignore a per-service `enabled: false`. */}}
{{- $image := merge (dict "repository" (printf "%s-%s" $v.image.repository .name)) (deepCopy $v.image) }}
{{- range $key := list "autoscaling" "podDisruptionBudget" "image" }}
{{- $merged := ternary $image (deepCopy (get $v $key)) (eq $key "image") }}
{{- range $k, $val := (get $svc $key | default dict) }}
{{- if not (and (kindIs "string" $val) (eq $val "")) }}
{{- $_ := set $merged $k $val }}
{{- end }}
{{- end }}
{{- $_ := set $out $key $merged }}
{{- end }}
{{- $probes := deepCopy $v.probes }}
{{- range $kind, $timings := ($svc.probes | default dict) }}
{{- $_ := set $probes $kind (merge (deepCopy $timings) (get $probes $kind | default dict)) }}
{{- end }}
{{- $_ := set $out "probes" $probes }}
{{- toYaml $out }}
{{- end }}

{{/* "<repository>:<tag>" of one service. Args: the effective settings' image, root. */}}
{{- define "tollgate.image" -}}
{{- printf "%s:%s" .image.repository (.image.tag | default .root.Chart.AppVersion | toString) }}
{{- end }}

{{/* "host:port" of a peer service inside the cluster. Args: root, name. */}}
{{- define "tollgate.peerAddress" -}}
{{- $peer := get .root.Values.services .name | default dict }}
{{- printf "%s:%v" (include "tollgate.componentName" .) (required (printf "services.%s.port is required" .name) $peer.port) }}
{{- end }}

{{/*
The non-secret environment of one service, as a YAML map of strings (the data of its env ConfigMap). Operator
`settings` come first so that the variables the chart manages (ports, peers, database, Kafka) always win.
Args: root, name.
*/}}
{{- define "tollgate.env" -}}
{{- $root := .root }}
{{- $facts := include "tollgate.facts" . | fromYaml }}
{{- $s := include "tollgate.settings" . | fromYaml }}
{{- $p := $facts.prefix }}
{{- $env := dict }}
{{- range $k, $val := ($s.settings | default dict) }}
{{- $_ := set $env (printf "%s_%s" $p $k) (toString $val) }}
{{- end }}
{{- $_ := set $env (printf "%s_%s" $p $facts.hostEnv) "0.0.0.0" }}
{{- $_ := set $env (printf "%s_%s" $p $facts.portEnv) (toString $s.port) }}
{{- $_ := set $env (printf "%s_LOG_LEVEL" $p) (toString $s.logLevel) }}
{{- $_ := set $env "TOLLGATE_ENV" $root.Values.environment }}
{{- if $facts.metricsEnv }}
{{- $_ := set $env (printf "%s_%s" $p $facts.metricsEnv) (ternary (toString $root.Values.metrics.port) "0" $root.Values.metrics.enabled) }}
{{- /* /metrics listens on loopback unless told otherwise; the metrics port is reachable only from metricsFrom */}}
{{- $_ := set $env "TOLLGATE_METRICS_ADDR" "0.0.0.0" }}
{{- end }}
{{- range $suffix, $peer := $facts.peers }}
{{- $_ := set $env (printf "%s_%s" $p $suffix) (include "tollgate.peerAddress" (dict "root" $root "name" $peer)) }}
{{- end }}
{{- if $facts.kafka }}
{{- $_ := set $env (printf "%s_KAFKA_BOOTSTRAP_SERVERS" $p) (required "kafka.bootstrapServers is required" $root.Values.kafka.bootstrapServers) }}
{{- $_ := set $env (printf "%s_KAFKA_SECURITY_PROTOCOL" $p) $root.Values.kafka.security.protocol }}
{{- with $root.Values.kafka.security.saslMechanism }}
{{- $_ := set $env (printf "%s_KAFKA_SASL_MECHANISM" $p) . }}
{{- end }}
{{- with $root.Values.kafka.security.tls.existingSecret }}
{{- range $var, $key := dict "CA_FILE" $root.Values.kafka.security.tls.caKey "CERT_FILE" $root.Values.kafka.security.tls.certKey "KEY_FILE" $root.Values.kafka.security.tls.keyKey }}
{{- if $key }}
{{- $_ := set $env (printf "%s_KAFKA_SSL_%s" $p $var) (printf "/etc/tollgate/kafka-tls/%s" $key) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- if and $facts.databaseEnv (not $s.databaseUrl.existingSecret) }}
{{- $_ := set $env (printf "%s_%s" $p $facts.databaseEnv) (printf "sqlite:////app/var/%s" $facts.sqliteFile) }}
{{- end }}
{{- if eq .name "router" }}
{{- $_ := set $env "ROUTER_UPSTREAM_TIMEOUT_SECONDS" (toString $s.upstreamTimeoutSeconds) }}
{{- if $s.mockBaseUrl }}
{{- $_ := set $env "ROUTER_MOCK_BASE_URL" $s.mockBaseUrl }}
{{- end }}
{{- if $s.providers }}
{{- $_ := set $env "ROUTER_PROVIDERS_FILE" "/etc/tollgate/router/providers.yaml" }}
{{- end }}
{{- end }}
{{- if eq .name "billing" }}
{{- $_ := set $env "BILLING_HOLD_TTL_SECONDS" (toString $s.holdTtlSeconds) }}
{{- end }}
{{- if and (eq .name "metering") $s.priceBook }}
{{- $_ := set $env "METERING_PRICE_BOOK_FILE" "/etc/tollgate/metering/price-book.yaml" }}
{{- end }}
{{- $_ := set $env "OTEL_SERVICE_NAME" (printf "tollgate-%s" .name) }}
{{- if $root.Values.otel.endpoint }}
{{- $_ := set $env "OTEL_EXPORTER_OTLP_ENDPOINT" $root.Values.otel.endpoint }}
{{- end }}
{{- if $root.Values.otel.sdkDisabled }}
{{- $_ := set $env "OTEL_SDK_DISABLED" "true" }}
{{- end }}
{{- toYaml $env }}
{{- end }}

{{/* The config files of one service (file name → content), as YAML; empty for services without files. */}}
{{- define "tollgate.files" -}}
{{- $s := include "tollgate.settings" . | fromYaml }}
{{- $files := dict }}
{{- if and (eq .name "router") $s.providers }}
{{- $_ := set $files "providers.yaml" $s.providers }}
{{- end }}
{{- if and (eq .name "metering") $s.priceBook }}
{{- $_ := set $files "price-book.yaml" $s.priceBook }}
{{- end }}
{{- if $files }}
{{- toYaml $files }}
{{- end }}
{{- end }}

{{/*
The ConfigMaps of one service: "<component>" (its non-secret environment, read with envFrom) and, when it has
config files, "<component>-files" (mounted under /etc/tollgate/<service>). The Deployment's checksum/config
annotation is the sha256 of exactly this text, so a config change rolls that service's pods and only them.
Args: root, name.
*/}}
{{- define "tollgate.configmaps" -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "tollgate.componentName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "tollgate.labels" . | nindent 4 }}
data:
  {{- include "tollgate.env" . | nindent 2 }}
{{- $files := include "tollgate.files" . }}
{{- if $files }}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "tollgate.componentName" . }}-files
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "tollgate.labels" . | nindent 4 }}
data:
  {{- $files | nindent 2 }}
{{- end }}
{{- end }}

{{/* One secretKeyRef env entry. Args: env (variable name), ref ({existingSecret, key, optional}). */}}
{{- define "tollgate.secretEnv" -}}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ .ref.existingSecret | quote }}
      key: {{ .ref.key | quote }}
      {{- if .ref.optional }}
      optional: true
      {{- end }}
{{- end }}

{{/* The event topics the services publish and read (tollgate_common.events.Topics). */}}
{{- define "tollgate.topics" -}}
- tollgate.usage.v1
- tollgate.usage.rated.v1
- tollgate.billing.v1
- tollgate.policy.v1
- tollgate.attempts.v1
{{- end }}

{{/* Name of the Secret holding TOLLGATE_INTERNAL_SECRET and POLICY_HASH_KEY (given, or the one the chart makes). */}}
{{- define "tollgate.internalSecretName" -}}
{{- .Values.internalSecrets.existingSecret | default (printf "%s-internal" (include "tollgate.fullname" .)) }}
{{- end }}

{{/*
The env entries every service gets from the internal Secret (TOLLGATE_INTERNAL_SECRET, the previous one while
rotating, POLICY_HASH_KEY for policy and the same key as INGRESS_POLICY_HASH_KEY for ingress, which decides DLP in
process with policy's engine) and from the Kafka SASL Secret. Args: root, name.
*/}}
{{- define "tollgate.internalEnv" -}}
{{- $v := .root.Values.internalSecrets }}
{{- $secret := include "tollgate.internalSecretName" .root }}
{{- include "tollgate.secretEnv" (dict "env" "TOLLGATE_INTERNAL_SECRET" "ref" (dict "existingSecret" $secret "key" $v.internalSecretKey)) }}
{{- if $v.previousInternalSecretKey }}
{{ include "tollgate.secretEnv" (dict "env" "TOLLGATE_INTERNAL_SECRET_PREVIOUS" "ref" (dict "existingSecret" $secret "key" $v.previousInternalSecretKey)) }}
{{- end }}
{{- if eq .name "policy" }}
{{ include "tollgate.secretEnv" (dict "env" "POLICY_HASH_KEY" "ref" (dict "existingSecret" $secret "key" $v.policyHashKeyKey)) }}
{{- end }}
{{- if eq .name "ingress" }}
{{ include "tollgate.secretEnv" (dict "env" "INGRESS_POLICY_HASH_KEY" "ref" (dict "existingSecret" $secret "key" $v.policyHashKeyKey)) }}
{{- end }}
{{- $sasl := .root.Values.kafka.security.sasl }}
{{- if $sasl.existingSecret }}
{{- $facts := include "tollgate.facts" . | fromYaml }}
{{ include "tollgate.secretEnv" (dict "env" (printf "%s_KAFKA_SASL_USERNAME" $facts.prefix) "ref" (dict "existingSecret" $sasl.existingSecret "key" $sasl.usernameKey)) }}
{{ include "tollgate.secretEnv" (dict "env" (printf "%s_KAFKA_SASL_PASSWORD" $facts.prefix) "ref" (dict "existingSecret" $sasl.existingSecret "key" $sasl.passwordKey)) }}
{{- end }}
{{- end }}

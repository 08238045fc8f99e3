{{/* Chart name, truncated to the 63 characters a label allows. */}}
{{- define "rtg.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified app name: release-chart unless the release name already contains the chart name. */}}
{{- define "rtg.fullname" -}}
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

{{- define "rtg.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "rtg.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rtg.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "rtg.labels" -}}
helm.sh/chart: {{ include "rtg.chart" . }}
{{ include "rtg.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: gateway
app.kubernetes.io/part-of: chat
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "rtg.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "rtg.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "rtg.image" -}}
{{- if not .Values.image.repository -}}
{{- fail "image.repository is required: the registry path of the image you built from the repository's Dockerfile and pushed (the project publishes none), e.g. --set image.repository=registry.example.com/chat/realtime-gateway" -}}
{{- end -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/*
A values scalar as an env string: whole float64 numbers (how Helm reads YAML numbers) print without an
exponent (1048576, not 1.048576e+06), lists join with commas.
*/}}
{{- define "rtg.envString" -}}
{{- $v := . -}}
{{- if kindIs "slice" $v -}}
{{- $parts := list -}}
{{- range $v }}{{ $parts = append $parts (include "rtg.envString" .) }}{{ end -}}
{{- join "," $parts -}}
{{- else if and (kindIs "float64" $v) (eq $v (floor $v)) -}}
{{- int64 $v -}}
{{- else if kindIs "invalid" $v -}}
{{- else -}}
{{- toString $v -}}
{{- end -}}
{{- end -}}

{{/*
Non-secret app settings as a dict of ENV -> value, exactly the names the app reads. Entries whose value is
empty are left out (the app default applies), except PORT, INTERNAL_PORT, DEMO, DRAIN_DELAY, DRAIN_WINDOW
and WORKERS.
*/}}
{{- define "rtg.configEnv" -}}
{{- $v := .Values -}}
{{- $g := $v.gateway -}}
{{- $optional := dict
  "JWT_PUBLIC_KEY" $v.auth.publicKey
  "JWT_ALGORITHMS" $v.auth.algorithms
  "JWT_AUDIENCE" $v.auth.audience
  "JWT_ISSUER" $v.auth.issuer
  "JWT_LEEWAY" $v.auth.leeway
  "TOKEN_REFRESH_NOTICE" $v.auth.refreshNotice
  "ROOM_ACCESS" $v.auth.roomAccess
  "CONNECT_HOOK_URL" $v.hooks.connectUrl
  "JOIN_HOOK_URL" $v.hooks.joinUrl
  "PUBLISH_HOOK_URL" $v.hooks.publishUrl
  "RPC_HOOK_URL" $v.hooks.rpcUrl
  "HOOK_TIMEOUT" $v.hooks.timeout
  "HOOK_CONCURRENCY" $v.hooks.concurrency
  "HOOK_ANSWER_BYTES" $v.hooks.answerBytes
  "HOOK_FORWARD_HEADERS" $v.hooks.forwardHeaders
  "JOIN_HOOK_CACHE_TTL" $v.hooks.joinCacheTtl
  "REVOCATION_TTL" $v.controlApi.revocationTtl
  "REDIS_HOST" $v.redis.host
  "REDIS_PORT" $v.redis.port
  "REDIS_CLUSTER_NODES" $v.redis.clusterNodes
  "REDIS_USERNAME" $v.redis.username
  "REDIS_TLS" (ternary "true" "" (eq (toString $v.redis.tls.enabled) "true"))
  "REDIS_TLS_CA" (ternary (printf "%s/%s" (include "rtg.redisCaDir" .) $v.redis.tls.caSecretKey) "" (and (eq (toString $v.redis.tls.enabled) "true") (ne $v.redis.tls.caSecret "")))
  "REDIS_PREFIX" $v.redis.prefix
  "REDIS_CONNECT_TIMEOUT" $v.redis.connectTimeout
  "REDIS_DB" $v.redis.db
  "KAFKA_BROKER_URL" $v.kafka.brokers
  "KAFKA_CLIENT_ID" $v.kafka.clientId
  "KAFKA_GROUP_ID" $v.kafka.groupId
  "KAFKA_TOPIC_INGEST" $v.kafka.topics.ingest
  "KAFKA_TOPIC_MESSAGE_EVENTS" $v.kafka.topics.messageEvents
  "KAFKA_TOPIC_ROOM_EVENTS" $v.kafka.topics.roomEvents
  "KAFKA_TOPIC_USER_EVENTS" $v.kafka.topics.userEvents
  "KAFKA_TOPIC_PRESENCE_EVENTS" $v.kafka.topics.presenceEvents
  "KAFKA_MESSAGE_TIMEOUT" $v.kafka.messageTimeout
  "KAFKA_FLUSH_TIMEOUT" $v.kafka.flushTimeout
  "ALLOWED_ORIGINS" $g.allowedOrigins
  "TRUSTED_PROXIES" $g.trustedProxies
  "LOG_LEVEL" $g.logLevel
  "MAX_CONTENT" $g.limits.maxContent
  "MAX_MESSAGE_BYTES" $g.limits.maxMessageBytes
  "RATE_LIMIT" $g.limits.rateLimit
  "RATE_BURST" $g.limits.rateBurst
  "MAX_ROOMS" $g.limits.maxRooms
  "MAX_USER_CONNECTIONS" $g.limits.maxUserConnections
  "MAX_CONNECTIONS" $g.limits.maxConnections
  "MAX_CONNECTIONS_PER_IP" $g.limits.maxConnectionsPerIp
  "REPLAY_BYTES" $g.limits.replayBytes
  "REQUEST_BODY_BYTES" $g.limits.requestBodyBytes
  "API_BODY_BYTES" $g.limits.apiBodyBytes
  "SSE_SEND_BYTES" $g.limits.sseSendBytes
  "HTTP_IDLE_TIMEOUT" $g.limits.httpIdleTimeout
  "DEDUPE_MEMORY_BYTES" $g.limits.dedupeMemoryBytes
  "OUTBOUND_QUEUE_FRAMES" $g.limits.outboundQueueFrames
  "OUTBOUND_QUEUE_BYTES" $g.limits.outboundQueueBytes
  "INVALID_FRAME_LIMIT" $g.limits.invalidFrameLimit
  "WAITING_BYTES" $g.limits.waitingBytes
  "HANDSHAKE_TIMEOUT" $g.limits.handshakeTimeout
  "LISTEN_BACKLOG" $g.limits.listenBacklog
  "MAX_LOOP_LAG" $g.limits.maxLoopLag
  "PING_INTERVAL" $g.keepalive.pingInterval
  "PING_TIMEOUT" $g.keepalive.pingTimeout
  "GC_THRESHOLD" $g.gcThreshold
  "TYPING_TTL" $g.ttl.typing
  "PRESENCE_TTL" $g.ttl.presence
  "DEDUPE_TTL" $g.ttl.dedupe
  "OFFLINE_GRACE" $g.ttl.offlineGrace
  "PRESENCE_GRACE" $g.ttl.presenceGrace
  "HISTORY_SIZE" $g.history.size
  "HISTORY_TTL" $g.history.ttl
  "HISTORY_ROOM_BYTES" $g.history.roomBytes
  "HISTORY_MEMORY_BYTES" $g.history.memoryBytes
  "PRESENCE_PAGE" $g.presence.page
  "PRESENCE_BROADCAST_LIMIT" $g.presence.broadcastLimit
  "PRESENCE_COUNT_INTERVAL" $g.presence.countInterval
-}}
{{- $env := dict
  "PORT" (include "rtg.envString" $g.port)
  "INTERNAL_PORT" (include "rtg.envString" $g.internalPort)
  "DEMO" (ternary "true" "false" (eq (toString $g.demo) "true"))
  "DRAIN_DELAY" (include "rtg.envString" $g.drainDelay)
  "DRAIN_WINDOW" (include "rtg.envString" $g.drainWindow)
  "WORKERS" "1"
-}}
{{- range $key, $value := $optional -}}
{{- $s := include "rtg.envString" $value -}}
{{- if ne $s "" -}}
{{- $_ := set $env $key $s -}}
{{- end -}}
{{- end -}}
{{- toYaml $env -}}
{{- end -}}

{{/* Name of the Secret that holds the HS256 secret (env JWT_SECRET). */}}
{{- define "rtg.jwtSecretName" -}}
{{- default (include "rtg.fullname" .) .Values.auth.existingSecret -}}
{{- end -}}

{{- define "rtg.jwtSecretKey" -}}
{{- if .Values.auth.existingSecret -}}{{ .Values.auth.existingSecretKey }}{{- else -}}JWT_SECRET{{- end -}}
{{- end -}}

{{/* True ("true") when the chart's own Secret must hold JWT_SECRET. */}}
{{- define "rtg.chartManagesJwt" -}}
{{- if not .Values.auth.existingSecret -}}true{{- end -}}
{{- end -}}

{{- define "rtg.redisPasswordSecretName" -}}
{{- default (include "rtg.fullname" .) .Values.redis.existingSecret -}}
{{- end -}}

{{- define "rtg.redisPasswordSecretKey" -}}
{{- if .Values.redis.existingSecret -}}{{ .Values.redis.existingSecretPasswordKey }}{{- else -}}REDIS_PASSWORD{{- end -}}
{{- end -}}

{{/* API_KEY: from controlApi.existingSecret, else the chart's Secret (controlApi.apiKey); unset: API off. */}}
{{- define "rtg.apiKeySecretName" -}}
{{- default (include "rtg.fullname" .) .Values.controlApi.existingSecret -}}
{{- end -}}

{{- define "rtg.apiKeySecretKey" -}}
{{- if .Values.controlApi.existingSecret -}}{{ .Values.controlApi.existingSecretKey }}{{- else -}}API_KEY{{- end -}}
{{- end -}}

{{/* HOOK_SECRET: from hooks.existingSecret, else the chart's Secret (hooks.secret); unset: unsigned calls. */}}
{{- define "rtg.hookSecretName" -}}
{{- default (include "rtg.fullname" .) .Values.hooks.existingSecret -}}
{{- end -}}

{{- define "rtg.hookSecretKey" -}}
{{- if .Values.hooks.existingSecret -}}{{ .Values.hooks.existingSecretKey }}{{- else -}}HOOK_SECRET{{- end -}}
{{- end -}}

{{- define "rtg.hasHookSecret" -}}
{{- if or .Values.hooks.existingSecret .Values.hooks.secret -}}true{{- end -}}
{{- end -}}

{{- define "rtg.hasApiKey" -}}
{{- if or .Values.controlApi.existingSecret .Values.controlApi.apiKey -}}true{{- end -}}
{{- end -}}

{{/* True when REDIS_PASSWORD is passed to the container at all. */}}
{{- define "rtg.hasRedisPassword" -}}
{{- if or .Values.redis.existingSecret .Values.redis.password -}}true{{- end -}}
{{- end -}}

{{/*
The JWT_SECRET value for the chart's Secret: given, or (auth.generateSecret) kept from the live Secret, or
generated. Releases before the env rename stored it under key JWT_DEV: read that too so an upgrade keeps
it. `lookup` returns nothing under `helm template`, so there a generated secret differs on every render.
*/}}
{{- define "rtg.jwtSecretValue" -}}
{{- if .Values.auth.jwtSecret -}}
{{- .Values.auth.jwtSecret -}}
{{- else -}}
{{- $live := lookup "v1" "Secret" .Release.Namespace (include "rtg.fullname" .) -}}
{{- $data := (and $live $live.data) | default (dict) -}}
{{- if hasKey $data "JWT_SECRET" -}}
{{- index $data "JWT_SECRET" | b64dec -}}
{{- else if hasKey $data "JWT_DEV" -}}
{{- index $data "JWT_DEV" | b64dec -}}
{{- else -}}
{{- randAlphaNum 48 -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
True ("true") when the internal port gets its own ClusterIP Service (<fullname>-internal): a NodePort or
LoadBalancer Service would otherwise give /metrics and /api/* an address outside the cluster.
*/}}
{{- define "rtg.separateInternalService" -}}
{{- if ne .Values.service.type "ClusterIP" -}}true{{- end -}}
{{- end -}}

{{- define "rtg.internalServiceName" -}}
{{- printf "%s-internal" (include "rtg.fullname" . | trunc 54 | trimSuffix "-") -}}
{{- end -}}

{{/* Minimum grace period: the pod must outlive the whole drain, then Kafka's flush
(KAFKA_FLUSH_TIMEOUT, 5 s by default) and 5 s of shutdown: at least 10 s after the drain. */}}
{{- define "rtg.afterDrain" -}}
{{- $flush := 5 -}}
{{- if ne (toString .Values.kafka.flushTimeout) "" -}}
{{- $flush = int (ceil (float64 .Values.kafka.flushTimeout)) -}}
{{- end -}}
{{- max 10 (add $flush 5) -}}
{{- end -}}

{{- define "rtg.minGracePeriod" -}}
{{- add (int .Values.preStopSleepSeconds) (int .Values.gateway.drainDelay) (int .Values.gateway.drainWindow) (int (include "rtg.afterDrain" .)) -}}
{{- end -}}

{{- define "rtg.terminationGracePeriodSeconds" -}}
{{- $min := int (include "rtg.minGracePeriod" .) -}}
{{- $set := int .Values.terminationGracePeriodSeconds -}}
{{- if eq $set 0 -}}
{{- $min -}}
{{- else if lt $set $min -}}
{{- fail (printf "terminationGracePeriodSeconds=%d is too low: it must be >= preStopSleepSeconds (%d) + gateway.drainDelay (%d) + gateway.drainWindow (%d) + max(10, kafka.flushTimeout + 5) (%d) = %d, or 0 to derive it, otherwise the kubelet kills pods before their sockets are drained" $set (int .Values.preStopSleepSeconds) (int .Values.gateway.drainDelay) (int .Values.gateway.drainWindow) (int (include "rtg.afterDrain" .)) $min) -}}
{{- else -}}
{{- $set -}}
{{- end -}}
{{- end -}}

{{/* Where the Redis CA Secret is mounted. */}}
{{- define "rtg.redisCaDir" -}}/etc/realtime-gateway/redis-ca{{- end -}}

{{/* Configuration checks that make rendering fail with a message naming the problem. */}}
{{- define "rtg.validate" -}}
{{- $redis := or .Values.redis.host .Values.redis.clusterNodes -}}
{{- if and .Values.redis.host .Values.redis.clusterNodes -}}
{{- fail "redis.host and redis.clusterNodes are exclusive: one Redis, or a Redis Cluster (docs/scaling.md)" -}}
{{- end -}}
{{- if and .Values.redis.tls.caSecret (ne (toString .Values.redis.tls.enabled) "true") -}}
{{- fail "redis.tls.caSecret is set but redis.tls.enabled is not: enable TLS to use the CA" -}}
{{- end -}}
{{- if and (gt (int .Values.replicaCount) 1) (not $redis) -}}
{{- fail (printf "replicaCount=%d requires redis.host (or redis.clusterNodes): without Redis the in-process bus only reaches sockets of one pod, so messages would not fan out across replicas. Set redis.host or use replicaCount=1" (int .Values.replicaCount)) -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (not $redis) -}}
{{- fail "autoscaling.enabled=true requires redis.host (or redis.clusterNodes): the HPA runs several replicas and, without Redis, messages would not fan out across them. Set redis.host or disable autoscaling" -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- fail (printf "autoscaling.minReplicas (%d) must be <= autoscaling.maxReplicas (%d)" (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- end -}}
{{- if and (not .Values.auth.existingSecret) (not .Values.auth.jwtSecret) (not .Values.auth.generateSecret) -}}
{{- fail "no JWT secret: set auth.existingSecret (a Secret you manage, key auth.existingSecretKey) or auth.jwtSecret (at least 32 characters); auth.generateSecret=true generates a random one, for throwaway installs only (it changes on every helm template)" -}}
{{- end -}}
{{- if and .Values.auth.jwtSecret (not .Values.auth.existingSecret) (lt (len (toString .Values.auth.jwtSecret)) 32) -}}
{{- fail "auth.jwtSecret must be at least 32 characters (the app refuses shorter HS256 secrets outside --dev)" -}}
{{- end -}}
{{- if eq (int .Values.gateway.internalPort) (int .Values.gateway.port) -}}
{{- fail (printf "gateway.internalPort must differ from gateway.port (both %d): /metrics and /api/* are served only on the internal port, which must stay off the Ingress" (int .Values.gateway.port)) -}}
{{- end -}}
{{- if and (eq .Values.service.type "ClusterIP") (eq (int .Values.service.internalPort) (int .Values.service.port)) -}}
{{- fail (printf "service.internalPort must differ from service.port (both %d)" (int .Values.service.port)) -}}
{{- end -}}
{{- $roomAccess := toString .Values.auth.roomAccess -}}
{{- if not (has $roomAccess (list "" "open" "token" "hook")) -}}
{{- fail (printf "auth.roomAccess must be \"open\", \"token\" or \"hook\", got %q" $roomAccess) -}}
{{- end -}}
{{- if and (eq $roomAccess "hook") (not .Values.hooks.joinUrl) -}}
{{- fail "auth.roomAccess=hook needs hooks.joinUrl: the backend that decides each join (docs/hooks.md)" -}}
{{- end -}}
{{- if and .Values.podDisruptionBudget.enabled (ne (toString .Values.podDisruptionBudget.minAvailable) "") (ne (toString .Values.podDisruptionBudget.maxUnavailable) "") -}}
{{- fail "podDisruptionBudget: set only one of minAvailable and maxUnavailable (set the other to \"\")" -}}
{{- end -}}
{{- $_ := include "rtg.terminationGracePeriodSeconds" . -}}
{{- end -}}

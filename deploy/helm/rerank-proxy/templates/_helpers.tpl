{{/* Names, labels and the proxy's rendered configuration. */}}

{{- define "rerank-proxy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name, at most 63 characters (a DNS label). */}}
{{- define "rerank-proxy.fullname" -}}
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

{{- define "rerank-proxy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rerank-proxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rerank-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "rerank-proxy.labels" -}}
helm.sh/chart: {{ include "rerank-proxy.chart" . }}
{{ include "rerank-proxy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "rerank-proxy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rerank-proxy.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "rerank-proxy.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* "https" when the proxy terminates TLS, else "http": the port name, probe scheme and
scrape scheme. */}}
{{- define "rerank-proxy.scheme" -}}
{{- if .Values.tls.enabled }}https{{ else }}http{{ end }}
{{- end }}

{{/* A probe's action: GET `path` with the listener's scheme; with mutual TLS (the proxy then
requires a client certificate that kubelet cannot present) a TCP check of the port, unless
probes.clientAuthProbe is httpGet. Call as (list $ "/path"). */}}
{{- define "rerank-proxy.probeAction" -}}
{{- $ := index . 0 }}
{{- $scheme := include "rerank-proxy.scheme" $ }}
{{- if and $.Values.tls.clientAuth (ne $.Values.probes.clientAuthProbe "httpGet") }}
tcpSocket:
  port: {{ $scheme }}
{{- else }}
httpGet:
  path: {{ index . 1 }}
  port: {{ $scheme }}
  scheme: {{ upper $scheme }}
{{- end }}
{{- end }}

{{/* Where Secrets and the ConfigMap are mounted (and named in the proxy config). */}}
{{- define "rerank-proxy.configDir" -}}/etc/rerank-proxy{{- end }}
{{- define "rerank-proxy.tlsDir" -}}/etc/rerank-proxy-tls/listen{{- end }}
{{- define "rerank-proxy.upstreamCADir" -}}/etc/rerank-proxy-tls/upstream{{- end }}
{{- define "rerank-proxy.modelsDir" -}}/models{{- end }}

{{/* The directory under /models that model.fetch downloads into. */}}
{{- define "rerank-proxy.modelDir" -}}
{{- $m := .Values.model }}
{{- default (last (splitList "/" (trimSuffix "/" $m.name))) $m.fetch.dir }}
{{- end }}

{{/* The claim the model cache uses when model.cache.type is pvc. */}}
{{- define "rerank-proxy.claimName" -}}
{{- default (printf "%s-models" (include "rerank-proxy.fullname" .)) .Values.model.cache.pvc.existingClaim }}
{{- end }}

{{/* terminationGracePeriodSeconds: the proxy's drain delay plus its in-flight limit plus a
margin, so the kubelet never SIGKILLs a pod that is still finishing requests. */}}
{{- define "rerank-proxy.gracePeriod" -}}
{{- $s := .Values.shutdown }}
{{- add (int (ceil $s.drainDelaySeconds)) (int (ceil $s.inflightSeconds)) (int (ceil $s.marginSeconds)) }}
{{- end }}

{{/* The proxy's YAML config: `config` with the keys the chart owns set from the other
values (listen, TLS paths, upstream CA, model name). */}}
{{- define "rerank-proxy.config" -}}
{{- $cfg := deepCopy (.Values.config | default dict) }}
{{- $listen := deepCopy (get $cfg "listen" | default dict) }}
{{- $_ := set $listen "host" "0.0.0.0" }}
{{- $_ := set $listen "port" (int .Values.containerPort) }}
{{- $_ := set $listen "drain_delay" .Values.shutdown.drainDelaySeconds }}
{{- $_ := unset $listen "tls_cert" }}
{{- $_ := unset $listen "tls_key" }}
{{- $_ := unset $listen "client_ca" }}
{{- if .Values.tls.enabled }}
{{- $dir := include "rerank-proxy.tlsDir" . }}
{{- $_ := set $listen "tls_cert" (printf "%s/tls.crt" $dir) }}
{{- $_ := set $listen "tls_key" (printf "%s/tls.key" $dir) }}
{{- if .Values.tls.clientAuth }}
{{- $_ := set $listen "client_ca" (printf "%s/ca.crt" $dir) }}
{{- end }}
{{- end }}
{{- $_ := set $cfg "listen" $listen }}
{{- $upstream := deepCopy (get $cfg "upstream" | default dict) }}
{{- $_ := unset $upstream "ca_file" }}
{{- if .Values.upstreamCA.enabled }}
{{- $_ := set $upstream "ca_file" (printf "%s/%s" (include "rerank-proxy.upstreamCADir" .) .Values.upstreamCA.key) }}
{{- end }}
{{- $_ := set $cfg "upstream" $upstream }}
{{- if not (kindIs "invalid" .Values.workers) }}
{{- $_ := set $listen "workers" (int .Values.workers) }}
{{- end }}
{{- $model := deepCopy (get $cfg "model" | default dict) }}
{{- if .Values.modelServer.enabled }}
{{- /* The model runs in the model server's pods: this proxy calls it over HTTP. Keys that
only mean something to a local model (the device above all: cuda here would fail the
proxy's preflight on a node without a GPU) are dropped. */}}
{{- $model = omit $model "device" "threads" "compile" "label" }}
{{- $_ := set $model "backend" "remote" }}
{{- $_ := set $model "name" .Values.model.name }}
{{- $remote := deepCopy (get $model "remote" | default dict) }}
{{- $_ := set $remote "urls" (list (include "rerank-proxy.modelServer.url" .)) }}
{{- $_ := set $remote "api" "cohere" }}
{{- $_ := set $remote "path" "/v1/rerank" }}
{{- /* Part of every score's cache key (local and shared): a new model means new keys. */}}
{{- $_ := set $remote "model" .Values.model.name }}
{{- $_ := unset $remote "api_key_env" }}
{{- $_ := unset $remote "api_key_file" }}
{{- $_ := unset $remote "ca_file" }}
{{- if .Values.modelServer.apiKey.secretName }}
{{- $_ := set $remote "api_key_env" .Values.modelServer.apiKey.env }}
{{- end }}
{{- $_ := set $model "remote" $remote }}
{{- /* The model server's token budget, so the proxy's cache keys say what was scored. */}}
{{- $served := dig "model" dict (fromYaml (include "rerank-proxy.modelServer.config" .)) }}
{{- if hasKey $served "max_length" }}
{{- $_ := set $model "max_length" (get $served "max_length") }}
{{- end }}
{{- else if .Values.model.fetch.enabled }}
{{- $_ := set $model "name" (printf "%s/%s" (include "rerank-proxy.modelsDir" .) (include "rerank-proxy.modelDir" .)) }}
{{- else }}
{{- $_ := set $model "name" .Values.model.name }}
{{- end }}
{{- $_ := set $cfg "model" $model }}
{{- $redis := include "rerank-proxy.redisURL" . }}
{{- if $redis }}
{{- $cache := deepCopy (get $cfg "cache" | default dict) }}
{{- $_ := set $cache "redis_url" $redis }}
{{- $_ := set $cfg "cache" $cache }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/* The model's name as the model server (or, without one, the proxy) loads it: the
fetched directory under /models with model.fetch, else model.name. */}}
{{- define "rerank-proxy.modelPath" -}}
{{- if .Values.model.fetch.enabled }}
{{- printf "%s/%s" (include "rerank-proxy.modelsDir" .) (include "rerank-proxy.modelDir" .) }}
{{- else }}
{{- .Values.model.name }}
{{- end }}
{{- end }}

{{/* Does the proxy container load the model itself (no model server)? "true" or "". */}}
{{- define "rerank-proxy.localModel" -}}
{{- if not .Values.modelServer.enabled }}true{{ end }}
{{- end }}

{{/* Worker processes per proxy pod: `workers`, else config.listen.workers, else 1. */}}
{{- define "rerank-proxy.workers" -}}
{{- if not (kindIs "invalid" .Values.workers) }}
{{- int .Values.workers }}
{{- else }}
{{- int (dig "listen" "workers" 1 (.Values.config | default dict)) }}
{{- end }}
{{- end }}

{{/* A CPU quantity ("2", "1.5", "500m") in millicores. */}}
{{- define "rerank-proxy.millicores" -}}
{{- $q := toString . }}
{{- if hasSuffix "m" $q }}
{{- int (trimSuffix "m" $q) }}
{{- else }}
{{- int (round (mulf (float64 $q) 1000.0) 0) }}
{{- end }}
{{- end }}

{{/* The proxy container's resources. With `cpuPerWorker` the CPU request (and the limit,
when `resources.limits.cpu` is set) is workers x cpuPerWorker, plus config.model.threads
cores when the model runs inside the pod; otherwise `resources` as given. */}}
{{- define "rerank-proxy.resources" -}}
{{- $res := deepCopy (.Values.resources | default dict) }}
{{- with .Values.cpuPerWorker }}
{{- $milli := mul (int (include "rerank-proxy.workers" $)) (int (include "rerank-proxy.millicores" .)) }}
{{- $model := dig "model" dict ($.Values.config | default dict) }}
{{- if and (include "rerank-proxy.localModel" $) (ne (toString (get $model "backend")) "remote") }}
{{- $milli = add $milli (mul (int (get $model "threads" | default 0)) 1000) }}
{{- end }}
{{- $cpu := printf "%dm" (int $milli) }}
{{- if eq (mod (int $milli) 1000) 0 }}
{{- $cpu = printf "%d" (div (int $milli) 1000) }}
{{- end }}
{{- $requests := deepCopy (get $res "requests" | default dict) }}
{{- $_ := set $requests "cpu" $cpu }}
{{- $_ := set $res "requests" $requests }}
{{- $limits := deepCopy (get $res "limits" | default dict) }}
{{- if hasKey $limits "cpu" }}
{{- $_ := set $limits "cpu" $cpu }}
{{- $_ := set $res "limits" $limits }}
{{- end }}
{{- end }}
{{- toYaml $res }}
{{- end }}

{{/* -- the model server (modelServer.enabled) ------------------------------------------ */}}

{{/* Its objects' name: the release's full name (at most 50 characters of it) + -model-server. */}}
{{- define "rerank-proxy.modelServer.fullname" -}}
{{- printf "%s-model-server" (include "rerank-proxy.fullname" . | trunc 50 | trimSuffix "-") }}
{{- end }}

{{/* Its own app.kubernetes.io/name, so the proxy's selector (name + instance) never picks
its pods, and the proxy's selector stays what it always was (selectors are immutable). */}}
{{- define "rerank-proxy.modelServer.selectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-model-server" (include "rerank-proxy.name" . | trunc 50 | trimSuffix "-") }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: model-server
{{- end }}

{{- define "rerank-proxy.modelServer.labels" -}}
helm.sh/chart: {{ include "rerank-proxy.chart" . }}
{{ include "rerank-proxy.modelServer.selectorLabels" . }}
app.kubernetes.io/part-of: {{ include "rerank-proxy.name" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The URL the proxies call: the model server's Service (plain HTTP inside the cluster). */}}
{{- define "rerank-proxy.modelServer.url" -}}
{{- printf "http://%s:%d" (include "rerank-proxy.modelServer.fullname" .) (int .Values.modelServer.service.port) }}
{{- end }}

{{- define "rerank-proxy.modelServer.image" -}}
{{- $img := .Values.modelServer.image | default dict }}
{{- printf "%s:%s" (default .Values.image.repository $img.repository) (default (default .Chart.AppVersion .Values.image.tag) $img.tag) }}
{{- end }}

{{/* The model server's YAML config: `config.model` (less `remote`) with
modelServer.config over it, the log settings of `config`, and the keys the chart owns
(listen.*, model.name, model_server.api_key_env). */}}
{{- define "rerank-proxy.modelServer.config" -}}
{{- $cfg := .Values.config | default dict }}
{{- $ms := .Values.modelServer }}
{{- $out := dict }}
{{- range $key := list "log_level" "log_format" "access_log" }}
{{- if hasKey $cfg $key }}
{{- $_ := set $out $key (get $cfg $key) }}
{{- end }}
{{- end }}
{{- $model := omit (deepCopy (get $cfg "model" | default dict)) "remote" }}
{{- if eq (toString (get $model "backend")) "remote" }}
{{- $_ := unset $model "backend" }}
{{- end }}
{{- $_ := set $out "model" $model }}
{{- $out = mergeOverwrite $out (deepCopy ($ms.config | default dict)) }}
{{- $listen := deepCopy (get $out "listen" | default dict) }}
{{- $_ := set $listen "host" "0.0.0.0" }}
{{- $_ := set $listen "port" (int $ms.containerPort) }}
{{- $_ := set $listen "drain_delay" .Values.shutdown.drainDelaySeconds }}
{{- range $key := list "tls_cert" "tls_key" "client_ca" "workers" "reuse_port" }}
{{- $_ := unset $listen $key }}
{{- end }}
{{- $_ := set $out "listen" $listen }}
{{- $model = get $out "model" | default dict }}
{{- $_ := set $model "name" (include "rerank-proxy.modelPath" .) }}
{{- $_ := set $out "model" $model }}
{{- $server := deepCopy (get $out "model_server" | default dict) }}
{{- if $ms.apiKey.secretName }}
{{- $_ := set $server "api_key_env" $ms.apiKey.env }}
{{- $_ := unset $server "api_key_file" }}
{{- end }}
{{- if $server }}
{{- $_ := set $out "model_server" $server }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/* -- Redis (redis.enabled) ------------------------------------------------------------ */}}

{{- define "rerank-proxy.redis.fullname" -}}
{{- printf "%s-redis" (include "rerank-proxy.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{- define "rerank-proxy.redis.selectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-redis" (include "rerank-proxy.name" . | trunc 57 | trimSuffix "-") }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: cache
{{- end }}

{{- define "rerank-proxy.redis.labels" -}}
helm.sh/chart: {{ include "rerank-proxy.chart" . }}
{{ include "rerank-proxy.redis.selectorLabels" . }}
app.kubernetes.io/part-of: {{ include "rerank-proxy.name" . }}
app.kubernetes.io/version: {{ .Values.redis.image.tag | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* cache.redis_url: the chart's Redis Service, or redis.url; empty: no shared cache (or
one from redis.urlSecret, which reaches the proxy as an environment variable). */}}
{{- define "rerank-proxy.redisURL" -}}
{{- if .Values.redis.enabled }}
{{- printf "redis://%s:%d/0" (include "rerank-proxy.redis.fullname" .) (int .Values.redis.service.port) }}
{{- else if .Values.redis.url }}
{{- .Values.redis.url }}
{{- end }}
{{- end }}

{{/* -- shared by the proxy's and the model server's pods ---------------------------------- */}}

{{/* The initContainer that downloads model.name into the cache volume (model.fetch). */}}
{{- define "rerank-proxy.modelFetchContainer" -}}
{{- $models := include "rerank-proxy.modelsDir" . }}
{{- $fetch := .Values.model.fetch }}
# Downloads the model once into the cache volume; a pod that finds it there (a PVC,
# or a restarted container) starts without touching the hub.
- name: model-fetch
  {{- if $fetch.image.repository }}
  image: {{ printf "%s:%s" $fetch.image.repository (default "latest" $fetch.image.tag) }}
  {{- else }}
  image: {{ include "rerank-proxy.image" . }}
  {{- end }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command:
    - sh
    - -ec
    - |
      dest="{{ $models }}/$MODEL_DIR"
      if [ -f "$dest/config.json" ]; then
        echo "model-fetch: $dest has config.json already; not downloading"
        exit 0
      fi
      # Download next to the target and rename: a pod killed half-way never leaves a
      # directory that looks complete, and pods sharing a volume do not collide.
      tmp="{{ $models }}/.fetch-$MODEL_DIR-$HOSTNAME"
      rm -rf "$tmp"
      if command -v hf >/dev/null 2>&1; then cli=hf; else cli=huggingface-cli; fi
      echo "model-fetch: $cli download $MODEL_REPO${MODEL_REVISION:+ (revision $MODEL_REVISION)} into $dest"
      "$cli" download "$MODEL_REPO" --local-dir "$tmp" ${MODEL_REVISION:+--revision "$MODEL_REVISION"}
      {{- with $fetch.include }} --include{{ range . }} {{ squote . }}{{ end }}{{ end }}
      {{- with $fetch.exclude }} --exclude{{ range . }} {{ squote . }}{{ end }}{{ end }} >/dev/null
      if [ ! -f "$tmp/config.json" ]; then
        echo "model-fetch: $MODEL_REPO has no config.json (not a transformers model, or excluded)" >&2
        exit 1
      fi
      if ! mv -T "$tmp" "$dest" 2>/dev/null; then
        if [ -f "$dest/config.json" ]; then
          rm -rf "$tmp"    # another pod on the same volume finished first
        else
          rm -rf "$dest" && mv -T "$tmp" "$dest"    # a leftover without config.json
        fi
      fi
      echo "model-fetch: done"
  env:
    - name: MODEL_REPO
      value: {{ .Values.model.name | quote }}
    - name: MODEL_REVISION
      value: {{ $fetch.revision | quote }}
    - name: MODEL_DIR
      value: {{ include "rerank-proxy.modelDir" . | quote }}
    - name: HOME
      value: /tmp
    - name: HF_HOME
      value: /tmp/hf
    - name: HF_HUB_DISABLE_TELEMETRY
      value: "1"
    - name: HF_HUB_DISABLE_PROGRESS_BARS
      value: "1"
    {{- if $fetch.tokenSecret.name }}
    - name: HF_TOKEN
      valueFrom:
        secretKeyRef:
          name: {{ $fetch.tokenSecret.name }}
          key: {{ $fetch.tokenSecret.key }}
    {{- end }}
    {{- with $fetch.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  resources:
    {{- toYaml $fetch.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: models
      mountPath: {{ $models }}
    - name: tmp
      mountPath: /tmp
{{- end }}

{{/* The environment of a container that loads the model: offline when it was fetched,
else the hub token (if any) for the first start's download. */}}
{{- define "rerank-proxy.modelEnv" -}}
{{- $fetch := .Values.model.fetch }}
{{- if $fetch.enabled }}
# model.name is the fetched directory: nothing to ask the hub.
- name: HF_HUB_OFFLINE
  value: "1"
{{- else if $fetch.tokenSecret.name }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $fetch.tokenSecret.name }}
      key: {{ $fetch.tokenSecret.key }}
{{- end }}
{{- end }}

{{/* The model cache volume (model.cache). */}}
{{- define "rerank-proxy.modelsVolume" -}}
- name: models
  {{- if eq .Values.model.cache.type "pvc" }}
  persistentVolumeClaim:
    claimName: {{ include "rerank-proxy.claimName" . }}
  {{- else }}
  emptyDir:
    {{- with .Values.model.cache.emptyDir.sizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
    {{- with .Values.model.cache.emptyDir.medium }}
    medium: {{ . }}
    {{- end }}
  {{- end }}
{{- end }}

{{/* The model server's API key, from its Secret, under the name both configs give
(model_server.api_key_env in the model server, model.remote.api_key_env in the proxy). */}}
{{- define "rerank-proxy.modelServer.keyEnv" -}}
{{- $key := .Values.modelServer.apiKey }}
{{- if and .Values.modelServer.enabled $key.secretName }}
- name: {{ $key.env }}
  valueFrom:
    secretKeyRef:
      name: {{ $key.secretName }}
      key: {{ $key.key }}
{{- end }}
{{- end }}

{{/* Checks of values that would otherwise fail only at run time. */}}
{{- define "rerank-proxy.validate" -}}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) }}
{{- fail "tls.enabled needs tls.secretName (a Secret with tls.crt and tls.key)" }}
{{- end }}
{{- if and .Values.tls.clientAuth (not .Values.tls.enabled) }}
{{- fail "tls.clientAuth needs tls.enabled (mutual TLS is TLS)" }}
{{- end }}
{{- if and .Values.upstreamCA.enabled (not .Values.upstreamCA.secretName) }}
{{- fail "upstreamCA.enabled needs upstreamCA.secretName" }}
{{- end }}
{{- if not (has .Values.probes.clientAuthProbe (list "tcpSocket" "httpGet")) }}
{{- fail (printf "probes.clientAuthProbe must be tcpSocket or httpGet, got %q" .Values.probes.clientAuthProbe) }}
{{- end }}
{{- if not (has .Values.model.cache.type (list "emptyDir" "pvc")) }}
{{- fail (printf "model.cache.type must be emptyDir or pvc, got %q" .Values.model.cache.type) }}
{{- end }}
{{- if and .Values.model.fetch.enabled (not (regexMatch "^[A-Za-z0-9][A-Za-z0-9._-]*$" (include "rerank-proxy.modelDir" .))) }}
{{- fail (printf "model.fetch.dir must be one directory name, got %q" (include "rerank-proxy.modelDir" .)) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- if not (kindIs "invalid" .Values.workers) }}
{{- if or (lt (int .Values.workers) 1) (gt (int .Values.workers) 256) }}
{{- fail (printf "workers must be between 1 and 256, got %v" .Values.workers) }}
{{- end }}
{{- end }}
{{- with .Values.cpuPerWorker }}
{{- if not (regexMatch "^[0-9]+(\\.[0-9]+)?m?$" (toString .)) }}
{{- fail (printf "cpuPerWorker must be a CPU quantity such as 1, 1.5 or 500m, got %q" (toString .)) }}
{{- end }}
{{- end }}
{{- $redis := .Values.redis }}
{{- if gt (len (compact (list (ternary "x" "" $redis.enabled) $redis.url $redis.urlSecret.name))) 1 }}
{{- fail "redis: set one of redis.enabled, redis.url and redis.urlSecret.name" }}
{{- end }}
{{- if and $redis.url (not (regexMatch "^(rediss?|unix)://" $redis.url)) }}
{{- fail (printf "redis.url must be a redis://, rediss:// or unix:// URL, got %q" $redis.url) }}
{{- end }}
{{- if .Values.modelServer.enabled }}
{{- $ms := .Values.modelServer }}
{{- $msModel := dig "model" dict (fromYaml (include "rerank-proxy.modelServer.config" .)) }}
{{- if eq (toString (get $msModel "backend")) "remote" }}
{{- fail "modelServer.config.model.backend: the model server runs the model itself; remote is the proxy's backend" }}
{{- end }}
{{- if $ms.apiKey.secretName }}
{{- if not (regexMatch "^[A-Za-z_][A-Za-z0-9_]*$" $ms.apiKey.env) }}
{{- fail (printf "modelServer.apiKey.env must be an environment variable name, got %q" $ms.apiKey.env) }}
{{- end }}
{{- if hasPrefix "RERANK_PROXY_" $ms.apiKey.env }}
{{- fail "modelServer.apiKey.env must not start with RERANK_PROXY_ (those name config keys)" }}
{{- end }}
{{- end }}
{{- $sent := int (dig "model" "remote" "max_documents" 32 (.Values.config | default dict)) }}
{{- $taken := int (dig "model_server" "max_documents" 1000 (fromYaml (include "rerank-proxy.modelServer.config" .))) }}
{{- if gt $sent $taken }}
{{- fail (printf "config.model.remote.max_documents (%d) exceeds the model server's model_server.max_documents (%d): every larger call would be refused" $sent $taken) }}
{{- end }}
{{- if and (eq (toString $ms.gpu) "0") (eq (toString (get $msModel "device")) "cuda") }}
{{- fail "modelServer.gpu is 0 but the model server's model.device is cuda" }}
{{- end }}
{{- end }}
{{- end }}

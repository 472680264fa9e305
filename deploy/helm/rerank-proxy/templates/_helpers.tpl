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
{{- $model := deepCopy (get $cfg "model" | default dict) }}
{{- if .Values.model.fetch.enabled }}
{{- $_ := set $model "name" (printf "%s/%s" (include "rerank-proxy.modelsDir" .) (include "rerank-proxy.modelDir" .)) }}
{{- else }}
{{- $_ := set $model "name" .Values.model.name }}
{{- end }}
{{- $_ := set $cfg "model" $model }}
{{- toYaml $cfg }}
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
{{- end }}

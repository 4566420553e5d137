{{/*
Names and labels of the prefill pool. Every resource carries the app.kubernetes.io labels; the
pods also carry the llm-d.ai serving labels through which the orchestrator and the decode
sidecars find them.
*/}}

{{- define "tandem-prefill.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release name, with "-prefill" added unless it already says so. */}}
{{- define "tandem-prefill.fullname" -}}
{{- if contains "prefill" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-prefill" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tandem-prefill.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tandem-prefill.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tandem-prefill.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tandem-prefill.labels" -}}
{{ include "tandem-prefill.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: prefill
app.kubernetes.io/part-of: tandem
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "tandem-prefill.chart" . }}
{{- end -}}

{{/* The labels the orchestrator selects on (llm-d's conventions for P/D pools). */}}
{{- define "tandem-prefill.servingLabels" -}}
llm-d.ai/inference-serving: "true"
llm-d.ai/model: {{ .Values.servingName | quote }}
llm-d.ai/role: prefill
{{- end -}}

{{/* The name clients use for the model. */}}
{{- define "tandem-prefill.servedModelName" -}}
{{- .Values.servedModelName | default .Values.model -}}
{{- end -}}

{{/* GPUs per pod: gpusPerPod, or one per tensor-parallel rank. */}}
{{- define "tandem-prefill.gpus" -}}
{{- $gpus := .Values.gpusPerPod | default .Values.tensorParallelSize | int -}}
{{- if lt $gpus (int .Values.tensorParallelSize) -}}
{{- fail (printf "gpusPerPod (%d) must be at least tensorParallelSize (%d)" $gpus (int .Values.tensorParallelSize)) -}}
{{- end -}}
{{- $gpus -}}
{{- end -}}

{{- define "tandem-prefill.tandemImage" -}}
{{- printf "%s:%s" .Values.tandemImage.repository (.Values.tandemImage.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/*
The `vllm serve` arguments after the subcommand, in the order prefill/launch.py's
VllmLaunch.argv() writes them (the chart tests compare the two). The KV-transfer JSON is
written by hand: toJson would sort its keys.
*/}}
{{- define "tandem-prefill.vllmArgs" -}}
{{- $v := .Values -}}
{{- $kvConfig := printf "{\"kv_connector\":\"NixlConnector\",\"kv_role\":\"kv_producer\",\"kv_load_failure_policy\":%s,\"kv_connector_extra_config\":{\"backends\":[\"UCX\"],\"kv_lease_duration\":%d}}" ($v.kv.loadFailurePolicy | toJson) (int $v.kv.leaseDuration) -}}
{{- $args := list $v.model
  "--port" "8000"
  "--served-model-name" (include "tandem-prefill.servedModelName" .)
  "--tensor-parallel-size" (toString (int $v.tensorParallelSize))
  "--gpu-memory-utilization" (toString $v.gpuMemoryUtilization)
  "--block-size" (toString (int $v.blockSize))
  "--enable-prefix-caching"
  "--enable-prompt-tokens-details"
  "--enable-server-load-tracking" -}}
{{- if $v.maxModelLen -}}
{{- $args = concat $args (list "--max-model-len" (toString (int $v.maxModelLen))) -}}
{{- end -}}
{{- if $v.maxNumBatchedTokens -}}
{{- $args = concat $args (list "--max-num-batched-tokens" (toString (int $v.maxNumBatchedTokens))) -}}
{{- end -}}
{{- $args = concat $args (list "--kv-transfer-config" $kvConfig) -}}
{{- with (include "tandem-prefill.kvEventsConfig" .) -}}
{{- $args = concat $args (list "--kv-events-config" .) -}}
{{- end -}}
{{- with $v.tracing.otlpTracesEndpoint -}}
{{- $args = concat $args (list "--otlp-traces-endpoint" .) -}}
{{- end -}}
{{- $args = concat $args (fromYamlArray (include "tandem-prefill.tlsArgs" .)) -}}
{{- $args = concat $args $v.extraArgs -}}
{{- toYaml $args -}}
{{- end -}}

{{/*
vLLM's --kv-events-config (prefill/launch.py VllmLaunch.kv_events_config): the pod publishes
its KV cache events for the orchestrator's precise prefix index; empty when disabled.
*/}}
{{- define "tandem-prefill.kvEventsConfig" -}}
{{- $e := .Values.kvEvents -}}
{{- if $e.enabled -}}
{{- printf "{\"enable_kv_cache_events\":true,\"publisher\":\"zmq\",\"endpoint\":\"tcp://*:%d\",\"replay_endpoint\":\"tcp://*:%d\"}" (int $e.port) (int $e.replayPort) -}}
{{- end -}}
{{- end -}}

{{/* The simulated pod's arguments after `tandem sim`. */}}
{{- define "tandem-prefill.simArgs" -}}
{{- $v := .Values -}}
{{- $args := list
  "--role" "prefill"
  "--profile" $v.simulatedProfile
  "--host" "0.0.0.0"
  "--port" "8000"
  "--side-channel-port" (toString (int $v.kv.sideChannelPort))
  "--served-model-name" (include "tandem-prefill.servedModelName" .)
  "--engine-id" "$(POD_NAME)"
  "--kv-lease-duration" (toString (int $v.kv.leaseDuration))
  "--kv-load-failure-policy" $v.kv.loadFailurePolicy
  "--kv-events-config" (include "tandem-prefill.kvEventsConfig" . | default "{\"enable_kv_cache_events\":false}") -}}
{{- if $v.maxModelLen -}}
{{- $args = concat $args (list "--max-model-len" (toString (int $v.maxModelLen))) -}}
{{- end -}}
{{- if $v.maxNumBatchedTokens -}}
{{- $args = concat $args (list "--max-num-batched-tokens" (toString (int $v.maxNumBatchedTokens))) -}}
{{- end -}}
{{- $args = concat $args (fromYamlArray (include "tandem-prefill.tlsArgs" .)) -}}
{{- toYaml $args -}}
{{- end -}}

{{/* Where the TLS Secret is mounted, and vLLM's --ssl-* flags for it (mesh/vllm_launch.py
VllmLaunch.tls_args). */}}
{{- define "tandem-prefill.tlsDir" -}}/etc/tandem-tls{{- end -}}
{{- define "tandem-prefill.tlsArgs" -}}
{{- $dir := include "tandem-prefill.tlsDir" . -}}
{{- $args := list -}}
{{- if .Values.tls.enabled -}}
{{- $args = list "--ssl-certfile" (printf "%s/tls.crt" $dir) "--ssl-keyfile" (printf "%s/tls.key" $dir) -}}
{{- if .Values.tls.mutual -}}
{{- $args = concat $args (list "--ssl-ca-certs" (printf "%s/ca.crt" $dir) "--ssl-cert-reqs" "2") -}}
{{- end -}}
{{- end -}}
{{- toYaml $args -}}
{{- end -}}

{{/* A probe of the serving port: /health over HTTP(S), or under mutual TLS only the open
port (VllmLaunch.probes). */}}
{{- define "tandem-prefill.probeCheck" -}}
{{- if and .Values.tls.enabled .Values.tls.mutual -}}
tcpSocket:
  port: 8000
{{- else -}}
httpGet:
  path: /health
  port: 8000
  {{- if .Values.tls.enabled }}
  scheme: HTTPS
  {{- end }}
{{- end -}}
{{- end -}}


{{/*
The preStop hook that drains the pod before vLLM gets SIGTERM (files/drain.py, read by
python3 from the command line), against the pod's own /metrics; over TLS with the mounted
certificates when the pod serves TLS.
*/}}
{{- define "tandem-prefill.drainCommand" -}}
{{- $d := .Values.drain -}}
{{- $dir := include "tandem-prefill.tlsDir" . -}}
{{- $scheme := ternary "https" "http" .Values.tls.enabled -}}
{{- $args := list "python3" "-c" (.Files.Get "files/drain.py")
  "--url" (printf "%s://127.0.0.1:8000/metrics" $scheme)
  "--sleep" (toString (int $d.preStopSleepSeconds))
  "--grace" (toString (int $d.graceSeconds))
  "--timeout" (toString (int $d.timeoutSeconds)) -}}
{{- if .Values.tls.enabled -}}
{{- $args = concat $args (list "--cafile" (printf "%s/ca.crt" $dir)) -}}
{{- if .Values.tls.mutual -}}
{{- $args = concat $args (list "--certfile" (printf "%s/tls.crt" $dir) "--keyfile" (printf "%s/tls.key" $dir)) -}}
{{- end -}}
{{- end -}}
{{- toYaml $args -}}
{{- end -}}

{{/* Seconds between the deletion and SIGKILL: room for the drain hook and vLLM's exit. */}}
{{- define "tandem-prefill.terminationGracePeriod" -}}
{{- $d := .Values.drain -}}
{{- if and $d.enabled (le (int $d.terminationGracePeriodSeconds) (int $d.timeoutSeconds)) -}}
{{- fail (printf "drain.terminationGracePeriodSeconds (%d) must exceed drain.timeoutSeconds (%d): Kubernetes kills the pod when the grace period ends, drain hook or not" (int $d.terminationGracePeriodSeconds) (int $d.timeoutSeconds)) -}}
{{- end -}}
{{- int $d.terminationGracePeriodSeconds -}}
{{- end -}}

{{/*
The pods the prefill pool needs, from every orchestrator replica's scaling signals: each replica
sees its own share of the routed prompts (summed), all of them the same pods' KV and batches
(the largest taken); the same sum the orchestrator's tandem_pool_desired_replicas makes alone.
*/}}
{{- define "tandem-prefill.desiredReplicasQuery" -}}
{{- $sel := .Values.autoscaling.orchestratorSelector | default (printf "namespace=%q" .Release.Namespace) -}}
{{- $pool := printf "tandem_pool_replicas_needed{pool=\"prefill\",%s" $sel -}}
ceil(sum(max by (instance) ({{ $pool }},signal=~"prefill_rate|prefill_backlog"})) + max({{ $pool }},signal=~"kv|itl"}))
{{- end -}}

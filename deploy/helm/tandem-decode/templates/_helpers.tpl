{{/*
Names and labels of the decode pool. Every resource carries the app.kubernetes.io labels; the
pods also carry the llm-d.ai serving labels through which the orchestrator finds them.
*/}}

{{- define "tandem-decode.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release name, with "-decode" added unless it already says so. */}}
{{- define "tandem-decode.fullname" -}}
{{- if contains "decode" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-decode" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tandem-decode.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tandem-decode.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tandem-decode.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tandem-decode.labels" -}}
{{ include "tandem-decode.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: decode
app.kubernetes.io/part-of: tandem
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "tandem-decode.chart" . }}
{{- end -}}

{{/* The labels the orchestrator selects on (llm-d's conventions for P/D pools). */}}
{{- define "tandem-decode.servingLabels" -}}
llm-d.ai/inference-serving: "true"
llm-d.ai/model: {{ .Values.servingName | quote }}
llm-d.ai/role: decode
{{- end -}}

{{/* The prefill pods of the same model, as the sidecar selects them. */}}
{{- define "tandem-decode.prefillSelector" -}}
{{- printf "llm-d.ai/inference-serving=true,llm-d.ai/model=%s,llm-d.ai/role=prefill" .Values.servingName -}}
{{- end -}}

{{- define "tandem-decode.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "tandem-decode.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/* The name clients use for the model. */}}
{{- define "tandem-decode.servedModelName" -}}
{{- .Values.servedModelName | default .Values.model -}}
{{- end -}}

{{/* GPUs per pod: gpusPerPod, or one per tensor-parallel rank. */}}
{{- define "tandem-decode.gpus" -}}
{{- $gpus := .Values.gpusPerPod | default .Values.tensorParallelSize | int -}}
{{- if lt $gpus (int .Values.tensorParallelSize) -}}
{{- fail (printf "gpusPerPod (%d) must be at least tensorParallelSize (%d)" $gpus (int .Values.tensorParallelSize)) -}}
{{- end -}}
{{- $gpus -}}
{{- end -}}

{{- define "tandem-decode.tandemImage" -}}
{{- printf "%s:%s" .Values.tandemImage.repository (.Values.tandemImage.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/*
The `vllm serve` arguments after the subcommand, in the order prefill/launch.py's
VllmLaunch.argv() writes them (the chart tests compare the two). The KV-transfer JSON is
written by hand: toJson would sort its keys.
*/}}
{{- define "tandem-decode.vllmArgs" -}}
{{- $v := .Values -}}
{{- $kvConfig := printf "{\"kv_connector\":\"NixlConnector\",\"kv_role\":\"kv_consumer\",\"kv_load_failure_policy\":%s,\"kv_connector_extra_config\":{\"backends\":[\"UCX\"],\"kv_lease_duration\":%d}}" ($v.kv.loadFailurePolicy | toJson) (int $v.kv.leaseDuration) -}}
{{- $args := list $v.model
  "--port" "8200"
  "--served-model-name" (include "tandem-decode.servedModelName" .)
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
{{- with (include "tandem-decode.kvEventsConfig" .) -}}
{{- $args = concat $args (list "--kv-events-config" .) -}}
{{- end -}}
{{- with $v.tracing.otlpTracesEndpoint -}}
{{- $args = concat $args (list "--otlp-traces-endpoint" .) -}}
{{- end -}}
{{- $args = concat $args $v.extraArgs -}}
{{- toYaml $args -}}
{{- end -}}

{{/*
vLLM's --kv-events-config (prefill/launch.py VllmLaunch.kv_events_config): the pod publishes
its KV cache events for the orchestrator's precise prefix index; empty when disabled.
*/}}
{{- define "tandem-decode.kvEventsConfig" -}}
{{- $e := .Values.kvEvents -}}
{{- if $e.enabled -}}
{{- printf "{\"enable_kv_cache_events\":true,\"publisher\":\"zmq\",\"endpoint\":\"tcp://*:%d\",\"replay_endpoint\":\"tcp://*:%d\"}" (int $e.port) (int $e.replayPort) -}}
{{- end -}}
{{- end -}}

{{/* The simulated pod's arguments after `tandem sim`. */}}
{{- define "tandem-decode.simArgs" -}}
{{- $v := .Values -}}
{{- $args := list
  "--role" "decode"
  "--profile" $v.simulatedProfile
  "--host" "0.0.0.0"
  "--port" "8200"
  "--side-channel-port" (toString (int $v.kv.sideChannelPort))
  "--served-model-name" (include "tandem-decode.servedModelName" .)
  "--engine-id" "$(POD_NAME)"
  "--kv-lease-duration" (toString (int $v.kv.leaseDuration))
  "--kv-load-failure-policy" $v.kv.loadFailurePolicy
  "--kv-events-config" (include "tandem-decode.kvEventsConfig" . | default "{\"enable_kv_cache_events\":false}") -}}
{{- if $v.maxModelLen -}}
{{- $args = concat $args (list "--max-model-len" (toString (int $v.maxModelLen))) -}}
{{- end -}}
{{- if $v.maxNumBatchedTokens -}}
{{- $args = concat $args (list "--max-num-batched-tokens" (toString (int $v.maxNumBatchedTokens))) -}}
{{- end -}}
{{- toYaml $args -}}
{{- end -}}

{{/*
The routing sidecar's arguments after `tandem sidecar`: it serves the pod's port 8000, forwards
to vLLM on 8200 and sends remote prefills only to the prefill pods its selector matches.
*/}}
{{- define "tandem-decode.sidecarArgs" -}}
{{- $args := list
  "--host" "0.0.0.0"
  "--port" "8000"
  "--vllm-port" "8200"
  "--prefill-selector" (include "tandem-decode.prefillSelector" .)
  "--prefill-port" "8000"
  "--namespace" .Release.Namespace -}}
{{- if .Values.tls.enabled -}}
{{- $dir := include "tandem-decode.tlsDir" . -}}
{{- $args = concat $args (fromYamlArray (include "tandem-decode.tlsArgs" .)) -}}
{{- $args = concat $args (list "--prefill-ca-certs" (printf "%s/ca.crt" $dir) "--prefill-certfile" (printf "%s/tls.crt" $dir) "--prefill-keyfile" (printf "%s/tls.key" $dir)) -}}
{{- end -}}
{{- toYaml (concat $args .Values.sidecar.extraArgs) -}}
{{- end -}}

{{/* Where the TLS Secret is mounted, and vLLM's --ssl-* flags for it (mesh/vllm_launch.py
VllmLaunch.tls_args). */}}
{{- define "tandem-decode.tlsDir" -}}/etc/tandem-tls{{- end -}}
{{- define "tandem-decode.tlsArgs" -}}
{{- $dir := include "tandem-decode.tlsDir" . -}}
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
{{- define "tandem-decode.probeCheck" -}}
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
The preStop hook that drains vLLM before it gets SIGTERM (files/drain.py, read by python3 from
the command line), against vLLM's own /metrics on its port behind the sidecar.
*/}}
{{- define "tandem-decode.drainCommand" -}}
{{- $d := .Values.drain -}}
{{- $args := list "python3" "-c" (.Files.Get "files/drain.py")
  "--url" "http://127.0.0.1:8200/metrics"
  "--sleep" (toString (int $d.preStopSleepSeconds))
  "--grace" (toString (int $d.graceSeconds))
  "--timeout" (toString (int $d.timeoutSeconds)) -}}
{{- toYaml $args -}}
{{- end -}}

{{/* Seconds between the deletion and SIGKILL: room for the drain hook and vLLM's exit. */}}
{{- define "tandem-decode.terminationGracePeriod" -}}
{{- $d := .Values.drain -}}
{{- if and $d.enabled (le (int $d.terminationGracePeriodSeconds) (int $d.timeoutSeconds)) -}}
{{- fail (printf "drain.terminationGracePeriodSeconds (%d) must exceed drain.timeoutSeconds (%d): Kubernetes kills the pod when the grace period ends, drain hook or not" (int $d.terminationGracePeriodSeconds) (int $d.timeoutSeconds)) -}}
{{- end -}}
{{- int $d.terminationGracePeriodSeconds -}}
{{- end -}}

{{/*
The pods the decode pool needs, from every orchestrator replica's scaling signals: each replica
sees its own share of the routed prompts (summed), all of them the same pods' KV and batches
(the largest taken); the same sum the orchestrator's tandem_pool_desired_replicas makes alone.
*/}}
{{- define "tandem-decode.desiredReplicasQuery" -}}
{{- $sel := .Values.autoscaling.orchestratorSelector | default (printf "namespace=%q" .Release.Namespace) -}}
{{- $pool := printf "tandem_pool_replicas_needed{pool=\"decode\",%s" $sel -}}
ceil(sum(max by (instance) ({{ $pool }},signal=~"prefill_rate|prefill_backlog"})) + max({{ $pool }},signal=~"kv|itl"}))
{{- end -}}

"""What tandem's services share about running and reaching one another: endpoints and their
discovery, errors in OpenAI's shape, tandem's headers and fields, HTTP proxying, readiness,
the event log, and how a vLLM server is launched (its ports, connector and events)."""

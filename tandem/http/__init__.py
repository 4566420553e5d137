"""What tandem's HTTP services share on every hop of a request (gateway → sidecar → pod): the
FastAPI handlers that answer errors in OpenAI's shape (`handlers.py`), tandem's headers and the
fields only it may set (`protocol.py`), proxying to a pod (`proxy.py`), TLS on the legs between
pods (`tls.py`) and trace context across them (`tracing.py`)."""

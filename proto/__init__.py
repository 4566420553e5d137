"""tandem's gRPC API: the .proto sources and the Python stubs generated from them."""

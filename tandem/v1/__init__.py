"""tandem.v1: the Pick API (`pick.proto`) and its generated stubs."""

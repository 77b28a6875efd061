"""HTTP routes, one module per route family; they parse, call the data plane and encode."""

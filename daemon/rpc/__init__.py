"""Beyond one machine: RPC workers and the daemon's side of them."""

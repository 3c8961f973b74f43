"""HTTP handlers: thin translations between HTTP and the broker's core."""

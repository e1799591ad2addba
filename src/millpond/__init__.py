"""millpond: network servers on Trio with bounded memory and a fast edge-triggered I/O core."""

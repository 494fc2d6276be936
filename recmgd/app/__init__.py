"""A small DLRM inference app that reads its embedding tables through a recmg pool (the demo's app)."""

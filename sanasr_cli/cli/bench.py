"""`sanasr bench`: parameters, MACs, latency and peak memory per part of the pipeline (placeholder until bench lands)."""
def register(app): pass

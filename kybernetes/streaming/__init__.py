"""Streaming protocols shared by the API server and the kubelet (exec, attach, port-forward).

spdy.py: SPDY/3.1 framing and a minimal server session, which kubectl speaks
for exec/attach before 1.30 and for port-forward before 1.31 (and inside the
WebSocket port-forward tunnel since).
"""

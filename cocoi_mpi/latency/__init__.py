"""The paper's latency model (eq. 8-12), k-degree and k*, planning, fitting profiles to
traces, and the large-n simulator (pure numpy).
"""

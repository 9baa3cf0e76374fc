

# --- appended by benchmarks/gpu/h200_run.sh (KIT_NIXL_TRACE=1): a diagnostic trace of what
# SGLang asks of NIXL, one line per call to stderr, to see where a prefill/decode pair's
# KV notification gets lost. Not part of nixl; the GPU runbook adds it on the GPU machine only.
def _kit_trace():
    import os as _os
    import sys as _sys
    import time as _time

    def say(text):
        print(f"[kit-nixl-trace {_time.time():.3f} pid {_os.getpid()}] {text}", file=_sys.stderr, flush=True)

    agent_cls = nixl_agent  # noqa: F821 (defined above in nixl's _api.py)
    seen_states = {}

    def wrap(name, show):
        original = getattr(agent_cls, name)

        def traced(self, *args, **kwargs):
            result = original(self, *args, **kwargs)
            text = show(self, args, kwargs, result)
            if text:
                say(f"{getattr(self, 'name', '?')}.{name}: {text}")
            return result

        setattr(agent_cls, name, traced)

    wrap("add_remote_agent", lambda s, a, k, r: f"-> {r}")
    wrap("initialize_xfer", lambda s, a, k, r: f"{a[0]} to {a[3]} notif {(a[4] if len(a) > 4 else k.get('notif_msg'))!r}")
    wrap("transfer", lambda s, a, k, r: f"-> {r}")

    def state(s, a, k, r):
        key = id(a[0])
        if seen_states.get(key) != r:
            seen_states[key] = r
            return f"handle {key:x} -> {r}"
        return None

    wrap("check_xfer_state", state)
    wrap("get_new_notifs", lambda s, a, k, r: f"{ {p: m for p, m in r.items() if m} }" if any(r.values()) else None)
    wrap("send_notif", lambda s, a, k, r: f"{a!r}")
    say("tracing nixl_agent")


_kit_trace()

"""The local agent: function pools of instances, cold starts, logs, stats."""

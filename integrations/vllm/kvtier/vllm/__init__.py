"""vLLM integration of kvtier.

Use it as vLLM's KV connector::

    --kv-transfer-config '{"kv_connector": "KVTierConnector",
                           "kv_connector_module_path": "kvtier.vllm.connector",
                           "kv_role": "kv_both",
                           "kv_connector_extra_config": {"mode": "embedded"}}'

docs/vllm.md lists every extra-config key.
"""

"""Methods added to every vLLM worker of an engine that follows a model being trained (vLLM's
`worker_extension_cls`), called by name through `LLM.collective_rpc`. Imported inside vLLM's
worker processes; nothing here runs in the caller's process."""

from __future__ import annotations


class WeightSync:
    def flywheel_reload_weights(self, weights_path: str) -> None:
        """Reload the model's weights in place from a checkpoint folder (safetensors in the
        checkpoint's own format), then re-tie a tied output head.

        vLLM's layer-wise reload fills each layer from the checkpoint and re-runs its weight
        processing (on a CPU: packing for the GEMM kernels). A head tied to the input
        embedding has no tensor of its own in the checkpoint, so the reload puts its old
        tensor back: the model would keep scoring the vocabulary with the old embedding. Here
        it is tied to the reloaded embedding again and its processing re-run."""
        runner = self.model_runner  # type: ignore[attr-defined]
        runner.reload_weights(weights_path=weights_path, is_checkpoint_format=True)
        model = runner.get_model()
        config = getattr(model, "config", None)
        head = getattr(model, "lm_head", None)
        embed = getattr(getattr(model, "model", None), "embed_tokens", None)
        if getattr(config, "tie_word_embeddings", False) and head is not None \
                and embed is not None:
            head.weight = embed.weight
            method = getattr(head, "quant_method", None)
            if method is not None:
                method.process_weights_after_loading(head)

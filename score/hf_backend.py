"""The transformers baseline judge: the same prompts through `model.generate` in fixed batches.

It is what our users run today (and a fallback where vLLM cannot be installed). Answers are
constrained to the same JSON schemas with xgrammar's transformers logits processor, so both
backends produce rows of the same schema and parse rate.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from data.models import resolve_model
from pool.stage import Feed
from score.config import ScoreConfig
from score.judge import Judge, Prepared, Request, engine_dtype, processor_kwargs
from score.stage import ScoreStage


class TransformersStage(ScoreStage):
    def __init__(self, config: ScoreConfig, task: str | None = None):
        super().__init__(config, task)
        self.prefetch = config.batch_size

    def load(self, device: str) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        if device == "cpu":
            torch.set_num_threads(int(os.environ.get("GENSCORE_CPU_THREADS", "1")))
        config = self.config
        path = resolve_model(config.model)
        self.device = device
        self.processor = AutoProcessor.from_pretrained(path, **processor_kwargs(config, path, self.template))
        self.processor.tokenizer.padding_side = "left"
        dtype = getattr(torch, engine_dtype(config, path, device))
        if config.load_format == "dummy":  # random weights at the real size, as vLLM's dummy format
            with torch.device(device):
                self.model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(path), dtype=dtype)
        else:
            self.model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, use_safetensors=True)
        self.model.to(device).eval()
        self.tokenizer = self.processor.tokenizer
        self._grammars: dict[str, object] = {}

    def rows(self, feed: Feed) -> Iterator[dict]:
        while items := feed.take(self.config.batch_size):
            prepared = [self.judge(item["task"]).prepare(item) for item in items]
            for p in prepared:
                if p.error:
                    yield self.judge(p.item["task"]).failed(p.item, p.error, p.started_at)
            good = [p for p in prepared if not p.error]
            if good:
                yield from self._generate(good)

    def _generate(self, batch: list[Prepared]) -> Iterator[dict]:
        requests = [(p, r) for p in batch for r in p.requests]
        texts: dict[int, dict[str, str]] = {id(p): {} for p in batch}
        tokens: dict[int, list[int]] = {id(p): [0, 0] for p in batch}
        # One generate call per question (same schema), in batches of batch_size requests.
        for question in dict.fromkeys(r.question for _, r in requests):
            group = [(p, r) for p, r in requests if r.question == question]
            for start in range(0, len(group), self.config.batch_size):
                chunk = group[start:start + self.config.batch_size]
                judge = self.judge(chunk[0][0].item["task"])
                for (p, _), text, n_in, n_out in zip(chunk, *self._run([r for _, r in chunk], judge)):
                    texts[id(p)][question] = text
                    tokens[id(p)][0] += n_in
                    tokens[id(p)][1] += n_out
        for p in batch:
            judge = self.judge(p.item["task"])
            while judge.ask_again(p, texts[id(p)]):  # the protocol asks both questions again
                for r in p.requests:
                    (text,), (n_in,), (n_out,) = self._run([r], judge)
                    texts[id(p)][r.question] = text
                    tokens[id(p)][0] += n_in
                    tokens[id(p)][1] += n_out
            yield judge.finish(p, texts[id(p)], *tokens[id(p)])

    def _run(self, requests: list[Request], judge: Judge) -> tuple[list[str], list[int], list[int]]:
        import torch

        images = [image for r in requests for image in r.images]
        inputs = self.processor(text=[r.prompt for r in requests], images=images, return_tensors="pt", padding=True)
        inputs = inputs.to(self.device)
        sampling = judge.sampling()
        kwargs = dict(max_new_tokens=sampling["max_tokens"], do_sample=sampling["temperature"] > 0)
        if kwargs["do_sample"]:  # the protocol's sampling, seeded per request batch
            kwargs.update({k: sampling[k] for k in ("temperature", "top_p", "top_k") if k in sampling})
            torch.manual_seed(requests[0].seed)
        if self.config.ignore_eos:
            kwargs["min_new_tokens"] = sampling["max_tokens"]
        if requests[0].schema is not None:
            kwargs["logits_processor"] = [self._grammar(requests[0].schema, len(requests))]
        with torch.inference_mode():
            out = self.model.generate(**inputs, **kwargs)
        new = out[:, inputs["input_ids"].shape[1]:]
        eos = {self.processor.tokenizer.eos_token_id, self.processor.tokenizer.pad_token_id}
        lengths = [sum(1 for t in seq.tolist() if t not in eos) for seq in new]
        texts = self.processor.batch_decode(new, skip_special_tokens=True)
        n_in = inputs["attention_mask"].sum(dim=1).tolist()
        return texts, n_in, lengths

    def _grammar(self, schema: dict, n: int):
        import json

        import xgrammar as xgr

        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            info = xgr.TokenizerInfo.from_huggingface(self.processor.tokenizer,
                                                      vocab_size=self.model.config.get_text_config().vocab_size)
            compiler = xgr.GrammarCompiler(info)
            self._grammars[key] = compiler.compile_json_schema(key, any_whitespace=False)
        return xgr.contrib.hf.LogitsProcessor([self._grammars[key]] * n)

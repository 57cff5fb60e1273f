"""theseus as a model of lm-evaluation-harness: its `LM` interface over `Engine`.

The requests are answered as the harness's own Hugging Face backend (`hf`) answers them, so
that a score here is the score people report: continuations scored after their context cut to
the model's window from the left, rolling windows for perplexities, generation (greedy, or
sampled as the task asks) until a stop sequence with the context cut to leave room for it. A model from a Hugging Face folder
encodes text as `transformers` does there (its tokenizer's own special tokens, a BOS it adds);
a theseus run encodes as it was trained.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from lm_eval import utils
from lm_eval.api.instance import Instance
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import (
    handle_stop_sequences,
    normalize_gen_kwargs,
    postprocess_generated_text,
)

from theseus.errors import UserError
from theseus.evaluation.engine import GREEDY, Engine, Sampling

MAX_GEN_TOKS = 256  # the `hf` backend's default when a task sets none
SAMPLING_SEED = 1234  # the harness's default seed for torch, which its `hf` backend samples with


class TheseusLM(TemplateLM):
    """A theseus model, scored by `engine` (its weights, window and batch) with `tokenizer`;
    `hf_folder` when it came from a Hugging Face folder whose tokenizer to encode with."""

    def __init__(self, engine: Engine, tokenizer: Any, hf_folder: Path | None = None) -> None:
        super().__init__()
        self.engine = engine
        self.theseus_tokenizer = tokenizer
        self.max_length = engine.max_length
        self.hf_folder = hf_folder
        self._hf: Any = None
        eot = tokenizer.eot_id
        self._prefix = eot
        if hf_folder is not None:
            from tokenizers import Tokenizer

            # transformers' encoding: special tokens in the text are themselves, and the
            # tokenizer's post-processor adds what it adds (a BOS)
            self._hf = Tokenizer.from_file(str(hf_folder / "tokenizer.json"))
            named = getattr(tokenizer, "special_tokens", {})
            eos, bos = (
                self._hf.token_to_id(named[k]) if named.get(k) else None
                for k in ("eos_token", "bos_token")
            )
            eot = eos if eos is not None else eot
            self._prefix = bos if bos is not None else eot
        self._eot = eot
        # a text that starts with this already has its BOS (the harness's own check)
        self._prefix_text = self.tok_decode([self._prefix], skip=False)

    @property
    def eot_token_id(self) -> int:
        return self._eot

    @property
    def prefix_token_id(self) -> int:
        return self._prefix

    @property
    def tokenizer_name(self) -> str:
        return str(self.hf_folder or self.theseus_tokenizer.identity.get("name", "theseus"))

    def tok_encode(
        self, string: str, add_special_tokens: bool | None = None, **kwargs: Any
    ) -> list[int]:
        if self._hf is None:
            return list(self.theseus_tokenizer.encode(string))
        if add_special_tokens is None:
            add_special_tokens = not string.startswith(self._prefix_text)
        return self._hf.encode(string, add_special_tokens=add_special_tokens).ids

    def tok_decode(self, tokens: list[int], skip: bool = True) -> str:
        if self._hf is None:
            return self.theseus_tokenizer.decode(list(tokens))
        return self._hf.decode(list(tokens), skip_special_tokens=skip)

    def loglikelihood(
        self, requests: list[Instance], disable_tqdm: bool = False
    ) -> list[tuple[float, bool]]:
        # the harness's encoding (its empty-context and trailing-space rules), without a
        # progress bar for what takes milliseconds
        return super().loglikelihood(requests, disable_tqdm=True)

    def _loglikelihood_tokens(
        self, requests: list[tuple[tuple[str, str], list[int], list[int]]], **kwargs: Any
    ) -> list[tuple[float, bool]]:
        """(log P(continuation | context), greedy) per request of tokens, the context cut from
        the left so that context and continuation fit the window."""
        for _, _, continuation in requests:
            if not continuation or len(continuation) > self.max_length:
                raise UserError(
                    f"harness: a continuation of {len(continuation)} tokens cannot be scored in "
                    f"the model's window of {self.max_length} (eval.context)"
                )
        results = self.engine.score([(context, cont) for _, context, cont in requests])
        for (request, _, _), answer in zip(requests, results, strict=True):
            if request is not None:
                self.cache_hook.add_partial("loglikelihood", request, answer)
        return results

    def loglikelihood_rolling(
        self, requests: list[Instance], disable_tqdm: bool = False
    ) -> list[float]:
        """Each text's log-likelihood in disjoint windows of the model's length, each token
        scored once, the first after the prefix token."""
        windows, owners = [], []
        for k, (string,) in enumerate(request.args for request in requests):
            pairs = utils.get_rolling_token_windows(
                token_list=self.tok_encode(string),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            )
            for context, continuation in map(utils.make_disjoint_window, pairs):
                windows.append((None, context, continuation))
                owners.append(k)
        totals = [0.0] * len(requests)
        for k, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows), strict=True):
            totals[k] += logprob
        for request, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """Continuations, cut at the first stop sequence (the tokenizer's end of text is one),
        each context cut from the left to leave room for max_gen_toks new tokens: greedy, or
        sampled when the task says do_sample (its temperature, top_k and top_p over those of
        the model's generation_config.json, over transformers' defaults)."""
        results: list[str] = [""] * len(requests)
        groups: dict[str, list[int]] = {}
        for k, request in enumerate(requests):  # requests with the same settings share batches
            groups.setdefault(repr(sorted(request.args[1].items())), []).append(k)
        eos = self.tok_decode([self.eot_token_id], skip=False)
        for members in groups.values():
            kwargs = normalize_gen_kwargs(requests[members[0]].args[1], MAX_GEN_TOKS)
            sampling = self._sampling(kwargs, requests[members[0]].task_name)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_new = int(kwargs.pop("max_gen_toks"))
            room = self.max_length - max_new
            if room < 1:
                raise UserError(
                    f"harness: {requests[members[0]].task_name} generates up to {max_new} tokens, "
                    f"which leaves no room for a prompt in the model's window of "
                    f"{self.max_length}; give a longer window (eval.context)"
                )
            prompts = [
                (self.tok_encode(requests[k].args[0]) or [self.prefix_token_id])[-room:]
                for k in members
            ]
            stops = [s for s in until if s]

            def stopped(tokens: list[int], stops: list[str] = stops) -> bool:
                text = self.tok_decode(tokens)
                return any(stop in text for stop in stops)

            outputs = self.engine.generate(
                prompts, max_new, self._generation_eot(), stopped, sampling
            )
            for k, tokens in zip(members, outputs, strict=True):
                text = postprocess_generated_text(self.tok_decode(tokens), until, None)
                results[k] = text
                self.cache_hook.add_partial("generate_until", requests[k].args, text)
        return results

    def _sampling(self, kwargs: dict[str, Any], task: str) -> Sampling:
        """How a task's generations are chosen; a setting theseus cannot apply is refused."""
        ignored = sorted(
            set(kwargs) - {"do_sample", "temperature", "top_k", "top_p", "until", "max_gen_toks"}
        )
        if ignored:
            raise UserError(
                f"harness: {task} asks for generation settings theseus does not apply "
                f"({', '.join(ignored)}); remove them from its generation_kwargs"
            )
        if not kwargs.get("do_sample"):
            return GREEDY
        # the task's settings over the folder's generation_config.json over transformers' defaults
        chosen: dict[str, Any] = {"temperature": 1.0, "top_k": 50, "top_p": 1.0}
        for given in (self._folder_generation_config, kwargs):
            chosen.update({k: given[k] for k in chosen if k in given})
        return Sampling(
            float(chosen["temperature"]),
            int(chosen["top_k"] or 0),
            float(chosen["top_p"]),
            seed=SAMPLING_SEED,
        )

    @functools.cached_property
    def _folder_generation_config(self) -> dict[str, Any]:
        """The folder's generation_config.json, read once ({} when there is none)."""
        if self.hf_folder is None or not (self.hf_folder / "generation_config.json").is_file():
            return {}
        return json.loads((self.hf_folder / "generation_config.json").read_text("utf-8"))

    def _generation_eot(self) -> int | None:
        """The id that ends a generation: the folder's generation_config eos, else end of text."""
        eos = self._folder_generation_config.get("eos_token_id")
        if isinstance(eos, int):
            return eos
        return self.eot_token_id

"""The runtime on SmolLM2-135M-Instruct equals the PyTorch reference, token for token."""

import pytest

from recycle_export.reference import ReferenceDecoder
from runtime.drafts import AnswerStore
from runtime.generator import Generator, Request
from runtime.request import DraftOptions

pytestmark = pytest.mark.real_model


@pytest.mark.parametrize("strategy", ["standard", "alternate", "verify"])
def test_runtime_equals_reference(smollm_artifacts, smollm_checkpoint, strategy):
    generator = Generator.from_artifacts(smollm_artifacts, check_hashes=False)
    ckpt = smollm_checkpoint[1]
    assert generator.store is not None and ckpt.answers is not None  # the committed answer store
    reference = ReferenceDecoder(ckpt.model, store=AnswerStore(ckpt.answers))
    for question in ("What is the capital of France?", "Name three colours."):
        ids = generator.encode(question, chat=True)
        ours = generator.generate(ids, Request(strategy, max_new_tokens=24))
        ref = reference.generate(ids, Request(strategy, max_new_tokens=24, stop_token_ids=generator.artifacts.eos_token_ids))
        assert ours.tokens == ref.tokens, (question, ours.text)
        assert ours.stats.by_source == ref.stats.by_source
    answer = generator.generate(generator.encode("What is the capital of France?", chat=True),
                                Request(strategy, max_new_tokens=24)).text
    assert "Paris" in answer, answer


def test_committed_module_is_trained(smollm_artifacts, smollm_checkpoint):
    """The module in models/ accepts a fair share of drafts (untrained: about none; the
    committed module: 37 of 58 on these two prompts) and drafts from its 8192-token
    vocabulary."""
    assert smollm_checkpoint[1].recycler_trained
    assert len(smollm_checkpoint[1].model.recycler.draft_tokens) == 8192
    generator = Generator.from_artifacts(smollm_artifacts, check_hashes=False)
    proposed = accepted = 0
    module_drafts = DraftOptions(max_draft=1, lookup_ngram=0, module=True, min_probability=0.0,
                                 answer_store=False)  # the module's own quality
    for question in ("Explain how rainbows form.", "Write a short poem about the sea."):
        stats = generator.generate(generator.encode(question, chat=True),
                                   Request("verify", max_new_tokens=48, drafts=module_drafts)).stats
        proposed, accepted = proposed + stats.drafts_proposed, accepted + stats.drafts_accepted
    assert accepted / proposed > 0.5

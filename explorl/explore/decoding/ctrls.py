"""CTRLS: reasoning steps as an MDP over latent states, with a small transition policy trained
on-policy while the language model stays frozen.

"CTRLS: Chain-of-Thought Reasoning via Latent State-Transition", arXiv:2507.08182. No code
was released, and only the abstract and introduction (v1, v2) and third-party summaries could
be read here; what follows implements what those state and makes every other part a named,
documented choice.

What the paper states (abstract v1): chain of thought as a Markov decision process with
latent state transitions; reasoning actions are explicit probability distributions in latent
space ("distributional" RL); an on-policy RL scheme with ε-greedy exploration and
entropy-based regularisation refines the latent transitions without fine-tuning the LLM; an
ELBO grounds the model. Third-party summaries add: the prompt and the steps so far are
abstracted into a continuous latent state s_t, a transition model P(s_{t+1} | s_t, a_t) moves
between them, with a latent-state encoder and a state-conditioned generator.

Here (our choices, where the readable text is silent):

- a reasoning step ends at ``delimiter`` (the testbed's scratchpad steps end in ``;``);
- latent state s_t: the frozen model's final hidden state at the position that emits the
  delimiter (it summarises the prompt and every step so far) — the LM itself is the encoder;
- action: one of ``actions`` latent codes c_1..c_N, each a fixed probability distribution over
  the vocabulary (a point of the embedding simplex, drawn once from Dir(1) with ``seed``) —
  "an explicit probability distribution in latent space";
- transition policy π_φ(a | s_t): a two-layer tanh MLP (``hidden`` units) from s_t to the N
  codes; sampling is ε-greedy: with probability ``epsilon`` a uniform code, else one from π_φ
  (evaluation samples π_φ, no ε);
- conditioning: the delimiter's input embedding becomes (1 − ``mix``)·E[delimiter] + ``mix``·c_a^T E,
  a soft token, so the next step is generated from the new latent state;
- objective (on-policy, once per training step, in ``observe``): with A the group-normalised
  advantage of the row (the recipe's estimator) and b = (1 − ε)·π_φ_old + ε/N the behaviour
  probability, L(φ) = −mean_t[π_φ(a_t|s_t)/b(a_t|s_t) · A] − β·mean_t H(π_φ(·|s_t)) (the
  importance ratio keeps the ε-greedy samples unbiased for π_φ; β = ``entropy_coef``), one
  Adam step at ``lr``;
- the language model stays frozen (``freezes_policy``: the trainer does not update it and the
  recipe names no objective).

Left out, and why: the variational latent-state encoder, the state-conditioned generator's
own parameters and the ELBO that trains them (their form and loss could not be read), the
"distributional" value model if there is one (no equation available), and the paper's models,
datasets and numbers. ``SoftInputs.tag`` carries the chosen code of each delimiter position;
the states are recomputed in ``observe`` by one forward of the frozen model over the batch.
"""
from __future__ import annotations

import torch

from explorl.explore.acted import SOFT_TOKENS_FED
from explorl.explore.base import Decoding
from explorl.policy.soft import soft_metrics
from explorl.policy.soft_decode import ThinkingRule, token_choice
from explorl.registry import register


def policy_logits(phi: dict, states: torch.Tensor) -> torch.Tensor:
    """π_φ's logits over the latent codes: tanh(s W1 + b1) W2 + b2."""
    return torch.tanh(states @ phi["w1"] + phi["b1"]) @ phi["w2"] + phi["b2"]


def transition_loss(phi: dict, states: torch.Tensor, actions: torch.Tensor, advantages: torch.Tensor,
                    epsilon: float, entropy_coef: float) -> tuple[torch.Tensor, dict]:
    """−mean[π_φ(a|s) / b(a|s) · A] − β·mean H(π_φ(·|s)), b = (1−ε)·π_φ + ε/N held fixed."""
    logp = torch.log_softmax(policy_logits(phi, states), -1)
    pi = logp.exp()
    chosen = pi.gather(-1, actions[:, None]).squeeze(-1)
    behaviour = ((1 - epsilon) * chosen + epsilon / pi.shape[-1]).detach()
    entropy = -(pi * logp).sum(-1)
    loss = -(chosen / behaviour * advantages).mean() - entropy_coef * entropy.mean()
    return loss, {"decode/ctrls_entropy": float(entropy.detach().mean())}


class LatentTransitions(ThinkingRule):
    """Ordinary sampling; at a delimiter, a latent code from π_φ (ε-greedy) mixed into its input."""

    needs_hidden = True

    def __init__(self, d: "CTRLS", epsilon: float, record: bool):
        self.d, self.epsilon, self.record = d, epsilon, record

    def start(self, rows, engine, device, max_new_tokens):
        self.d.bind(engine)
        ids = engine.tokenizer(self.d.delimiter, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise ValueError(f"decoding ctrls: delimiter {self.d.delimiter!r} must be one token, it is {len(ids)}")
        self.delimiter = ids[0]

    def step(self, t, logits, temperature, top_p, generator, noise, hidden):
        c = token_choice(logits, temperature, top_p, generator, noise)
        boundary = c.tokens == self.delimiter
        c.tag = torch.full_like(c.tokens, -1)
        if not bool(boundary.any()):
            return c
        if generator is None:
            raise ValueError("decoding ctrls: latent codes are drawn from the engine's generator; sampling with "
                             "given noise is not supported")
        d = self.d
        with torch.no_grad():
            pi = torch.softmax(policy_logits(d.phi_on(hidden.device), hidden[boundary].float()), -1)
            behaviour = (1 - self.epsilon) * pi + self.epsilon / pi.shape[-1]
            action = torch.multinomial(behaviour, 1, generator=generator).squeeze(-1)
        V = logits.shape[-1]
        weights = torch.zeros(c.tokens.shape[0], V, device=logits.device)
        delimiter = torch.nn.functional.one_hot(torch.tensor(self.delimiter, device=logits.device), V).float()
        weights[boundary] = (1 - d.mix) * delimiter + d.mix * d.codes.to(logits.device)[action]
        c.fed, c.weights = boundary, weights
        c.tag[boundary] = action
        return c


@register("decoding", "ctrls", paper="CTRLS, latent state transitions with a frozen LM (arXiv:2507.08182)")
class CTRLS(Decoding):
    engaged_when = (SOFT_TOKENS_FED,)
    freezes_policy = True
    state_keys = ("phi", "opt_state", "codes")

    def __init__(self, delimiter: str = ";", actions: int = 8, mix: float = 0.5, epsilon: float = 0.1,
                 entropy_coef: float = 0.01, lr: float = 1e-3, hidden: int = 64, seed: int = 0,
                 temperature: float = 1.0, top_p: float = 1.0):
        if actions < 2 or hidden < 1:
            raise ValueError("decoding ctrls: need actions >= 2 and hidden >= 1")
        if not 0 <= mix <= 1 or not 0 <= epsilon <= 1:
            raise ValueError("decoding ctrls: mix and epsilon must be in [0, 1]")
        if entropy_coef < 0 or lr <= 0 or temperature <= 0 or not 0 < top_p <= 1:
            raise ValueError("decoding ctrls: need entropy_coef >= 0, lr > 0, temperature > 0, top_p in (0, 1]")
        self.delimiter, self.actions, self.mix, self.epsilon = delimiter, actions, mix, epsilon
        self.entropy_coef, self.lr, self.hidden, self.seed = entropy_coef, lr, hidden, seed
        self.temperature, self.top_p = temperature, top_p
        self.phi, self.opt_state, self.codes = None, None, None
        self.engine, self._optimizer = None, None

    def temperatures(self, step, max_new_tokens):
        return torch.full((max_new_tokens,), float(self.temperature))

    def thinking(self, step, evaluating=False):
        return LatentTransitions(self, 0.0 if evaluating else self.epsilon, record=not evaluating)

    def bind(self, engine) -> None:
        """Keep the engine (its frozen model gives the states) and build φ and the codes once."""
        self.engine = engine
        if self.phi is None:
            d = engine.model.config.hidden_size
            V = engine.model.get_input_embeddings().num_embeddings
            g = torch.Generator().manual_seed(self.seed)
            self.phi = {"w1": torch.randn(d, self.hidden, generator=g) / d ** 0.5, "b1": torch.zeros(self.hidden),
                        "w2": torch.zeros(self.hidden, self.actions), "b2": torch.zeros(self.actions)}
            gamma = torch._standard_gamma(torch.ones(self.actions, V), generator=g)
            self.codes = gamma / gamma.sum(-1, keepdim=True)
        if self._optimizer is None:
            params = [p.requires_grad_(True) for p in self.phi.values()]
            self._optimizer = torch.optim.Adam(params, lr=self.lr)
            if self.opt_state is not None:
                self._optimizer.load_state_dict(self.opt_state)

    def phi_on(self, device) -> dict:
        return {k: v.to(device) for k, v in self.phi.items()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self._optimizer = None  # rebuilt over the restored φ at the next rollout

    def observe(self, stats):
        batch = stats.extras["batch"]
        metrics = soft_metrics(batch)
        soft = batch.soft
        if soft is None or self.phi is None:
            return metrics
        at = (soft.tag >= 0) & batch.own_rows[:, None] & (batch.mask > 0)
        metrics["decode/ctrls_boundaries"] = float(at.sum())
        if not bool(at.any()):
            return metrics
        with torch.no_grad():
            _, hidden = self.engine.response_logits(batch, return_hidden=True)
        rows, pos = at.nonzero(as_tuple=True)
        states = hidden[rows.to(hidden.device), pos.to(hidden.device)].float().cpu()
        loss, m = transition_loss(self.phi, states, soft.tag[rows, pos], batch.advantages[rows].float(),
                                  self.epsilon, self.entropy_coef)
        self._optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._optimizer.step()
        self.opt_state = self._optimizer.state_dict()
        metrics.update(m, **{"decode/ctrls_loss": float(loss.detach())})
        return metrics

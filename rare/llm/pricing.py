"""What a call costs: the configured `llm.price`, else litellm's price table, halved in batch mode when
the table has no batch price."""

from rare.llm import litellm  # imported on first use

BATCH_PRICE_FACTOR = 0.5  # batch price relative to online when the price table has no batch price


class Pricing:
    """Prices of one model in one mode; `price` is {input_per_mtok, output_per_mtok} in USD, or None."""

    def __init__(self, model: str, price: dict | None, mode: str):
        self.model, self.price, self.mode = model, price, mode

    def token_prices(self) -> tuple[float, float] | None:
        """USD per prompt and per completion token; None if unknown."""
        if self.price is not None:
            return float(self.price.get("input_per_mtok", 0)) / 1e6, float(self.price.get("output_per_mtok", 0)) / 1e6
        try:
            info = litellm.get_model_info(self.model)
        except Exception:  # litellm raises for models it has no price for
            return None
        prompt, completion = info.get("input_cost_per_token"), info.get("output_cost_per_token")
        if prompt is None or completion is None:
            return None
        if self.mode == "batch":
            prompt = info.get("input_cost_per_token_batches") or prompt * BATCH_PRICE_FACTOR
            completion = info.get("output_cost_per_token_batches") or completion * BATCH_PRICE_FACTOR
        return float(prompt), float(completion)

    def of_tokens(self, prompt_tokens: int, completion_tokens: int) -> float:
        prices = self.token_prices()
        return 0.0 if prices is None else prompt_tokens * prices[0] + completion_tokens * prices[1]

    def of_response(self, response, prompt_tokens: int, completion_tokens: int) -> float:
        """A litellm response's cost (None response: a batch line, priced by its tokens)."""
        if self.price is not None or response is None:
            return self.of_tokens(prompt_tokens, completion_tokens)
        computed = (getattr(response, "_hidden_params", None) or {}).get("response_cost")
        if computed is not None:  # litellm priced the call already; pricing it again costs CPU on every call
            return float(computed)
        try:
            return float(litellm.completion_cost(completion_response=response) or 0.0)
        except Exception:  # litellm raises for models it has no price for
            return 0.0

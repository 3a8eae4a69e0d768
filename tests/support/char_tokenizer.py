"""A tokenizer with one token per character: what prompt fitting and unit planning need of one."""


class CharTokenizer:
    def __call__(self, texts, add_special_tokens=True):
        if isinstance(texts, str):
            return {"input_ids": [ord(c) for c in texts]}
        return {"input_ids": [[ord(c) for c in t] for t in texts]}

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(i) for i in ids)

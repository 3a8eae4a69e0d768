"""The values a call carries between the tests sandbox and the candidate's: tagged JSON, one message a line.

Standard library only: its source is also the first part of both sandbox programs (:mod:`.calls`).
Only plain values cross: ``None``, ``bool``, ``int`` (any size), ``float``, ``str``, ``bytes``,
``bytearray`` and lists, tuples, dicts, sets and frozensets of them. :func:`decode` is the trust
boundary: it accepts ``json.loads`` output of the tagged form and builds exact builtins only.

A subclass of a plain type crosses as its base (a ``Counter`` as a ``dict``). A call's mutable containers
(lists, dicts, sets, bytearrays) keep their identity across it: both sides
number them in the order they meet them (:class:`Refs`), and one met again crosses as ``{"r": n}``. So
an argument passed twice is one object to the candidate, the argument's new contents after the call are
copied back into the caller's own object (:func:`copy_back`), and a returned argument is the caller's
same object.
"""

import json as _json

_MAX_LINE = 1 << 24
_MAX_DEPTH = 200
# ints past this cross as hex: JSON's decimal digits are capped (int_max_str_digits)
_BIG = 1 << 4096
_MUTABLE = (list, dict, set, bytearray)
PLAIN = "None, bool, int, float, str, bytes, bytearray, and lists, tuples, dicts, sets and frozensets of them"


class Uncrossable(TypeError):
    """A value that cannot cross faithfully (a generator, an open file, a custom class)."""


class Refs:
    """The mutable containers of one call, in the order both sides meet them."""

    def __init__(self):
        self.objects = []
        self._index = {}

    def add(self, obj):
        self._index[id(obj)] = len(self.objects)
        # held: an id is never reused while the call lasts
        self.objects.append(obj)

    def find(self, obj):
        return self._index.get(id(obj)) if isinstance(obj, _MUTABLE) else None


def encode(x, refs=None, depth=0):
    """``x`` as tagged JSON; :class:`Uncrossable` for anything that is not a plain value."""
    if refs is None:
        refs = Refs()
    if depth > _MAX_DEPTH:
        raise Uncrossable("value nested too deeply")
    t = type(x)
    if x is None or t is bool or t is float or t is str:
        return x
    if t is int:
        return x if -_BIG < x < _BIG else {"i": hex(x)}
    if isinstance(x, bool):
        return bool(x)
    if isinstance(x, int):
        # an int subclass crosses as its plain value
        return encode(int.__int__(x), refs, depth)
    if isinstance(x, float):
        return float.__float__(x)
    if isinstance(x, str):
        return str.__str__(x)
    seen = refs.find(x)
    if seen is not None:
        return {"r": seen}
    if isinstance(x, bytes):
        return {"b": bytes(x).hex()}
    if isinstance(x, tuple):
        return {"t": [encode(v, refs, depth + 1) for v in tuple.__iter__(x)]}
    if isinstance(x, frozenset):
        return {"f": [encode(v, refs, depth + 1) for v in frozenset.__iter__(x)]}
    if isinstance(x, _MUTABLE):
        # before its items: an item that is the container itself refers back
        refs.add(x)
        return contents(x, refs, depth)
    raise Uncrossable(f"{type(x).__name__} is not a plain value ({PLAIN})")


def contents(x, refs, depth=0):
    """A mutable container's items (the container itself already numbered)."""
    if isinstance(x, bytearray):
        return {"ba": bytes(x).hex()}
    if isinstance(x, list):
        return {"l": [encode(v, refs, depth + 1) for v in list.__iter__(x)]}
    if isinstance(x, dict):
        return {"d": [[encode(k, refs, depth + 1), encode(v, refs, depth + 1)] for k, v in dict.items(x)]}
    return {"s": [encode(v, refs, depth + 1) for v in set.__iter__(x)]}


_EMPTY = {"ba": bytearray, "l": list, "d": dict, "s": set}


def decode(x, refs=None, depth=0):
    """Exact builtins from tagged JSON; ValueError for anything else."""
    if refs is None:
        refs = Refs()
    if depth > _MAX_DEPTH:
        raise ValueError("value nested too deeply")
    t = type(x)
    if x is None or t is bool or t is int or t is float or t is str:
        return x
    if t is dict and len(x) == 1:
        ((tag, v),) = x.items()
        if tag == "r" and type(v) is int and 0 <= v < len(refs.objects):
            return refs.objects[v]
        if tag == "i" and type(v) is str:
            return int(v, 16)
        if tag == "b" and type(v) is str:
            return bytes.fromhex(v)
        if tag == "t" and type(v) is list:
            return tuple(decode(i, refs, depth + 1) for i in v)
        if tag == "f" and type(v) is list:
            return frozenset(decode(i, refs, depth + 1) for i in v)
        if tag in _EMPTY:
            out = _EMPTY[tag]()
            # before its items, as the sender numbered it
            refs.add(out)
            fill(out, x, refs, depth)
            return out
    raise ValueError("not a plain value")


def fill(out, x, refs, depth=0):
    """Put the items of ``x`` (a mutable container's tagged contents) into ``out``, replacing its own."""
    ((tag, v),) = x.items() if type(x) is dict and len(x) == 1 else ((None, None),)
    kind = _EMPTY.get(tag)
    if kind is None or type(out) is not kind or type(v) is not (str if tag == "ba" else list):
        raise ValueError("not the contents of a " + type(out).__name__)
    if tag == "ba":
        out[:] = bytes.fromhex(v)
    elif tag == "l":
        out[:] = [decode(i, refs, depth + 1) for i in v]
    elif tag == "s":
        items = [decode(i, refs, depth + 1) for i in v]
        out.clear()
        out.update(items)
    else:
        pairs = []
        for pair in v:
            if type(pair) is not list or len(pair) != 2:
                raise ValueError("malformed dict item")
            pairs.append((decode(pair[0], refs, depth + 1), decode(pair[1], refs, depth + 1)))
        out.clear()
        out.update(pairs)


def states(refs, count):
    """The contents, now, of the call's first ``count`` containers (its arguments'): sent back after the call."""
    return [contents(refs.objects[i], refs) for i in range(count)]


def copy_back(refs, count, sent):
    """The arguments' containers take the contents the candidate's copies have after the call."""
    if type(sent) is not list or len(sent) != count:
        raise ValueError("malformed argument states")
    decoded = []
    # every state decoded first: one may refer to a container met in another
    for state in sent:
        tag = next(iter(state)) if type(state) is dict and len(state) == 1 else None
        if tag not in _EMPTY:
            raise ValueError("malformed argument state")
        fresh = _EMPTY[tag]()
        fill(fresh, state, refs)
        decoded.append(fresh)
    for i, fresh in enumerate(decoded):
        # the caller's: a subclass (Counter, defaultdict) takes its base's contents
        target = refs.objects[i]
        base = type(fresh)
        if not isinstance(target, base):
            raise ValueError("an argument's state of another type")
        if base in (list, bytearray):
            base.__setitem__(target, slice(None), fresh)
        else:
            base.clear(target)
            base.update(target, fresh)


def send(stream, message):
    stream.write(_json.dumps(message) + "\n")
    stream.flush()


def receive(stream):
    line = stream.readline(_MAX_LINE)
    if not line.endswith("\n"):
        raise RuntimeError(f"the candidate's process ended, or sent a message over {_MAX_LINE} characters")
    return _json.loads(line)

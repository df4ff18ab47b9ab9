"""Spec errors surface at definition time and name the offending term."""

import pytest

from scandsl import Key, Scalar, SpecError, State, Value, exp, outer, recurrence


def test_state_squared_is_not_linear():
    with pytest.raises(SpecError, match="product of states is not linear"):

        @recurrence
        def bad(S: State[Value, Key], q: Key, k: Key, v: Value):
            S = S * S + outer(v, k)
            return S @ q, S


def test_state_twice_is_rejected():
    with pytest.raises(SpecError, match="one term only"):

        @recurrence
        def bad(S: State[Value, Key], q: Key, k: Key, v: Value):
            S = S + S + outer(v, k)
            return S @ q, S


def test_undeclared_input_is_named():
    with pytest.raises(SpecError, match="'w' needs an annotation"):

        @recurrence
        def bad(S: State[Value, Key], q: Key, k: Key, v: Value, w):
            S = S + outer(v, k)
            return S @ q, S


def test_mixed_feature_axes_are_named():
    with pytest.raises(SpecError, match=r"mix feature axes"):

        @recurrence
        def bad(S: State[Value, Key], q: Key, k: Key, v: Value):
            S = S + outer(v, k + v)
            return S @ q, S


def test_input_term_in_wrong_orientation():
    with pytest.raises(SpecError, match="axis order"):

        @recurrence
        def bad(S: State[Value, Key], q: Key, k: Key, v: Value):
            S = S + outer(k, v)
            return S @ q, S


def test_gate_after_input_is_rejected():
    with pytest.raises(SpecError, match="multiply the state by a gate before adding inputs"):

        @recurrence
        def bad(S: State[Value, Key], q: Key, k: Key, v: Value, gk: Key.log_gate):
            S = (S + outer(v, k)) * exp(gk)
            return S @ q, S


def test_must_return_new_states():
    with pytest.raises(SpecError, match="return the read-out followed by every new state"):

        @recurrence
        def bad(S: State[Value, Key], q: Key, k: Key, v: Value):
            S = S + outer(v, k)
            return S @ q


def test_read_with_wrong_axis():
    with pytest.raises(SpecError, match="reads a vector on"):

        @recurrence
        def bad(S: State[Value, Key], q: Key, k: Key, v: Value):
            S = S + outer(v, k)
            return S @ v, S


def test_no_branching_on_data():
    with pytest.raises(SpecError, match="no truth value"):

        @recurrence
        def bad(S: State[Value, Key], q: Key, k: Key, v: Value, g: Scalar):
            if g:
                S = S + outer(v, k)
            return S @ q, S


def test_partially_updated_read_is_rejected():
    with pytest.raises(SpecError, match="partially updated"):

        @recurrence
        def bad(S: State[Value, Key], q: Key, k: Key, v: Value, g: Scalar.log_gate):
            o = (S * exp(g)) @ q
            return o, S * exp(g) + outer(v, k) * 2

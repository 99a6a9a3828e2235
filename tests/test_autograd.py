"""The tiny autograd: every primitive's gradient against float64 central differences."""

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from dpo_np import autograd as ag
from dpo_np.autograd import Tensor, no_grad
from dpo_np.gradcheck import gradcheck, relative_error

TOL = 1e-7       # observed ~1e-11; the issue asks < 1e-6, DESIGN.md aims for < 1e-7
SETTINGS = settings(max_examples=25, deadline=None)


def rand(rng, *shape, low=None):
    x = rng.standard_normal(shape)
    return x if low is None else np.abs(x) + low


def broadcast_pair(draw):
    """Two shapes that broadcast: one full, the other with some axes dropped or set to 1."""
    full = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    other = [1 if draw(st.booleans()) else n for n in full]
    drop = draw(st.integers(0, len(other) - 1))
    other = other[drop:]
    return (full, other) if draw(st.booleans()) else (other, full)


@st.composite
def two_broadcastable(draw):
    sa, sb = broadcast_pair(draw)
    return sa, sb, draw(st.integers(0, 2**31 - 1))


BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "maximum": lambda a, b: ag.maximum(a, b),
    "where": lambda a, b: ag.where(a.data > 0.3, a, b),
}


@pytest.mark.parametrize("name", sorted(BINARY))
@SETTINGS
@given(case=two_broadcastable())
def test_binary_ops_match_central_differences_under_broadcasting(name, case):
    sa, sb, seed = case
    rng = np.random.default_rng(seed)
    a, b = rand(rng, *sa), rand(rng, *sb)
    if name == "div":
        b = np.sign(b) * (np.abs(b) + 0.5)         # keep away from the pole at 0
    if name == "maximum":
        b = b + 0.05 * np.sign(b - a.mean())       # ties are kinks; avoid them
    errors = gradcheck(BINARY[name], [a, b])
    assert max(errors) < TOL, errors


UNARY = {
    "neg": (lambda x: -x, None),
    "exp": (lambda x: x.exp(), None),
    "log": (lambda x: x.log(), 0.2),
    "tanh": (lambda x: x.tanh(), None),
    "sqrt": (lambda x: x.sqrt(), 0.2),
    # kept off 0, where the derivative 3x² vanishes and central differences' own error h² dominates it
    "pow3": (lambda x: (x + 0.2 * np.sign(x.data)) ** 3, None),
    "pow_neg_half": (lambda x: x ** -0.5, 0.2),
    "sigmoid": (ag.sigmoid, None),
    "logsigmoid": (ag.logsigmoid, None),
    "softplus": (ag.softplus, None),
    "relu": (lambda x: ag.relu(x + 0.01 * np.sign(x.data)), None),
    "log_softmax_last": (lambda x: ag.log_softmax(x, axis=-1), None),
    "log_softmax_first": (lambda x: ag.log_softmax(x, axis=0), None),
    "softmax": (lambda x: ag.softmax(x, axis=-1), None),
    "logsumexp": (lambda x: ag.logsumexp(x, axis=-1), None),
    "logsumexp_keepdims": (lambda x: ag.logsumexp(x, axis=0, keepdims=True), None),
    "sum_all": (lambda x: x.sum(), None),
    "sum_axis": (lambda x: x.sum(axis=0), None),
    "sum_keepdims": (lambda x: x.sum(axis=-1, keepdims=True), None),
    "mean_all": (lambda x: x.mean(), None),
    "mean_axis": (lambda x: x.mean(axis=-1), None),
    "max_axis": (lambda x: x.max(axis=-1), None),
    "reshape": (lambda x: x.reshape(-1) * np.arange(x.size), None),
    "transpose": (lambda x: x.T, None),
    "getitem_slice": (lambda x: x[..., ::2], None),
    "getitem_repeated": (lambda x: x[np.array([0, 0, -1])], None),
    "sort": (lambda x: ag.sort(x, axis=-1), None),
    "sort_first_axis": (lambda x: ag.sort(x, axis=0), None),
}


@pytest.mark.parametrize("name", sorted(UNARY))
@SETTINGS
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), seed=st.integers(0, 2**31 - 1))
def test_unary_ops_match_central_differences(name, shape, seed):
    f, low = UNARY[name]
    x = rand(np.random.default_rng(seed), *shape, low=low)
    if name.startswith("sort"):   # a kink at every tie: central differences (eps 1e-5) must not step across one
        axis = 0 if name == "sort_first_axis" else -1
        assume(np.diff(np.sort(x, axis=axis), axis=axis).min(initial=np.inf) > 1e-4)
    errors = gradcheck(f, [x])
    assert max(errors) < TOL, errors


@SETTINGS
@given(n=st.integers(1, 4), k=st.integers(1, 4), m=st.integers(1, 4), batch=st.sampled_from([(), (2,), (3, 1)]),
       seed=st.integers(0, 2**31 - 1))
def test_matmul_matches_central_differences_for_batched_and_broadcast_operands(n, k, m, batch, seed):
    rng = np.random.default_rng(seed)
    a, b = rand(rng, *batch, n, k), rand(rng, k, m)
    assert max(gradcheck(lambda a, b: a @ b, [a, b])) < TOL
    assert max(gradcheck(lambda a, b: b.T @ a.transpose(*range(a.ndim - 2), a.ndim - 1, a.ndim - 2),
                         [a, b])) < TOL


@pytest.mark.parametrize("left,right", [((4,), (4,)), ((4,), (2, 4, 3)), ((2, 3, 4), (4,))])
def test_matmul_handles_vector_operands(left, right):
    rng = np.random.default_rng(0)
    assert max(gradcheck(lambda a, b: a @ b, [rand(rng, *left), rand(rng, *right)])) < TOL


def test_gather_matches_central_differences_with_repeated_indices():
    rng = np.random.default_rng(1)
    x = rand(rng, 3, 4, 5)
    index = rng.integers(0, 5, size=(3, 4, 7))        # more picks than entries: repeats are certain
    assert max(gradcheck(lambda t: ag.gather(t, index, axis=-1), [x])) < TOL
    index0 = rng.integers(0, 3, size=(2, 4, 5))
    assert max(gradcheck(lambda t: ag.gather(t, index0, axis=0), [x])) < TOL


def test_gather_equals_take_along_axis():
    rng = np.random.default_rng(2)
    x, index = rand(rng, 2, 6), rng.integers(0, 6, size=(2, 3))
    np.testing.assert_array_equal(ag.gather(x, index).data, np.take_along_axis(x, index, -1))


def test_concatenate_and_stack_match_central_differences():
    rng = np.random.default_rng(3)
    a, b, c = rand(rng, 2, 3), rand(rng, 2, 1), rand(rng, 2, 3)
    assert max(gradcheck(lambda a, b: ag.concatenate([a, b, a], axis=1), [a, b])) < TOL
    assert max(gradcheck(lambda a, c: ag.stack([a, c, a * c], axis=1), [a, c])) < TOL


def test_sort_gradient_follows_the_permutation():
    x = Tensor(np.array([3.0, 1.0, 2.0]), requires_grad=True)
    out = ag.sort(x)
    np.testing.assert_array_equal(out.data, [1.0, 2.0, 3.0])
    (out * np.array([10.0, 20.0, 30.0])).sum().backward()
    np.testing.assert_array_equal(x.grad, [30.0, 10.0, 20.0])


def test_a_node_used_twice_accumulates_both_contributions():
    x = Tensor(np.array([1.5, -2.0]), requires_grad=True)
    y = x * x + x                     # dy/dx = 2x + 1, x reaches y along three paths
    y.sum().backward()
    np.testing.assert_allclose(x.grad, 2 * x.data + 1)


def test_leaf_gradients_accumulate_across_backward_calls_and_are_not_shared():
    x = Tensor(np.ones(3), requires_grad=True)
    y = Tensor(np.ones(3), requires_grad=True)
    (x + y).sum().backward()
    x.grad += 5.0                     # editing one leaf's grad must not touch the other's
    np.testing.assert_array_equal(y.grad, np.ones(3))
    (x * 2.0).sum().backward()
    np.testing.assert_array_equal(x.grad, np.full(3, 8.0))


def test_deep_graph_does_not_overflow_the_recursion_limit():
    x = Tensor(np.array(0.5), requires_grad=True)
    y = x
    for _ in range(20_000):
        y = y * 1.0 + 0.0
    y.backward()
    assert x.grad == pytest.approx(1.0)


def test_ndarray_on_the_left_reaches_the_tensor():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    a = np.array([3.0, 4.0])
    for out in (a * x, a + x, a - x, a / x, a @ x):
        assert isinstance(out, Tensor)
    (a * x).sum().backward()
    np.testing.assert_array_equal(x.grad, a)


def test_no_grad_builds_no_graph():
    x = Tensor(np.ones(2), requires_grad=True)
    with no_grad():
        y = (x * 3.0).exp()
    assert not y.requires_grad and y._parents == ()
    assert ag.is_grad_enabled()
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()


def test_backward_needs_a_scalar_or_an_upstream_gradient_of_the_right_shape():
    x = Tensor(np.ones((2, 2)), requires_grad=True)
    with pytest.raises(ValueError, match="scalar"):
        (x * 2.0).backward()
    with pytest.raises(ValueError, match=r"\(3,\)"):
        (x * 2.0).backward(np.ones(3))


def test_power_rejects_a_tensor_exponent():
    with pytest.raises(TypeError, match="exponent"):
        Tensor(np.ones(2)) ** Tensor(np.ones(2))


def test_gather_rejects_float_indices():
    with pytest.raises(TypeError, match="index"):
        ag.gather(np.ones((2, 3)), np.zeros((2, 1)))


@pytest.mark.parametrize("dtype", [np.int64, np.int16, np.uint8, np.bool_, np.float32, np.float64])
def test_float_functions_of_integer_tensors_give_numpys_float_dtype_and_values(dtype):
    x = np.array([0, 1, 3], dtype=dtype)
    want = np.exp(x).dtype                                # NumPy's own answer: int64 → float64, ...
    z = x.astype(np.float64)
    for f, ref in ((ag.sigmoid, 1 / (1 + np.exp(-z))), (ag.logsigmoid, -np.log1p(np.exp(-z))),
                   (ag.softplus, np.log1p(np.exp(z))), (ag.exp, np.exp(z)), (ag.tanh, np.tanh(z))):
        out = f(ag.Tensor(x))
        assert out.dtype == want, (f.__name__, out.dtype)
        np.testing.assert_allclose(out.data, ref, rtol=1e-3 if want == np.float16 else 1e-6)   # σ(1) was 0


def test_float32_stays_float32_through_python_scalar_arithmetic():
    x = Tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    y = ag.logsigmoid(2.0 * x - 1.0) / 3 + ag.softplus(-x) ** 2 - 1 + 0.5 ** 2 * x
    y = ag.log_softmax(y).mean()
    assert y.dtype == np.float32
    y.backward()
    assert x.grad.dtype == np.float32


# -- dtype promotion: every binary op against NumPy itself ----------------------------------

# the Tensor side: integers, a bool, both float widths
TENSOR_DATA = {"int64": np.array([1, 3]), "int32": np.array([1, 3], dtype=np.int32),
               "uint8": np.array([1, 3], dtype=np.uint8), "bool": np.array([True, False]),
               "float32": np.array([1.5, 3.0], dtype=np.float32), "float64": np.array([1.5, 3.0])}
# the other side: weak Python numbers, strong NumPy scalars, a 0-d array, a list, arrays
OTHERS = {"py_int": 2, "py_float": 0.5, "py_bool": True, "py_int_too_big_for_uint8": 300,
          "np_float64": np.float64(0.5), "np_float32": np.float32(0.5), "np_int64": np.int64(2),
          "np_int8": np.int8(2), "0d_float64": np.array(0.5), "list_of_ints": [2, 4],
          "int64_array": np.array([2, 4]), "float32_array": np.array([0.5, 4.0], dtype=np.float32),
          "float64_array": np.array([0.5, 4.0])}
OPS = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
       "truediv": lambda a, b: a / b, "matmul": lambda a, b: a @ b, "pow": lambda a, b: a ** b}


def _numpy_or_error(f, a, b):
    try:
        with np.errstate(all="ignore"):
            return f(a, b), None
    except Exception as err:        # NumPy refuses (bool − bool, 300 into uint8, matmul of a scalar)
        return None, type(err)


@pytest.mark.parametrize("side", ["tensor_left", "tensor_right"])
@pytest.mark.parametrize("other", sorted(OTHERS))
@pytest.mark.parametrize("kind", sorted(TENSOR_DATA))
@pytest.mark.parametrize("op", sorted(OPS))
def test_binary_ops_promote_exactly_as_numpy_does(op, kind, other, side):
    """The value and dtype of Tensor <op> x (and x <op> Tensor) are NumPy's for the same operands:
    Python numbers are weak (NEP 50), NumPy scalars and arrays strong. Catches a number cast into the
    Tensor's dtype (int · 0.5 = 0) and a float32 widened by a Python float."""
    f, a, b = OPS[op], TENSOR_DATA[kind], OTHERS[other]
    if op == "pow" and (side == "tensor_right" or np.ndim(b) > 0):
        return                                             # exponents are constant scalars (next test)
    left, right = (a, b) if side == "tensor_left" else (b, a)
    expected, error = _numpy_or_error(f, left, right)
    wrap = (lambda x, y: f(Tensor(x), y)) if side == "tensor_left" else (lambda x, y: f(x, Tensor(y)))
    if error is not None:
        with pytest.raises(error):
            with np.errstate(all="ignore"):
                wrap(left, right)
        return
    with np.errstate(all="ignore"):
        out = wrap(left, right)
    assert isinstance(out, Tensor)
    assert out.dtype == np.asarray(expected).dtype, (out.dtype, np.asarray(expected).dtype)
    np.testing.assert_array_equal(out.data, expected)


def test_the_defect_itself_an_integer_tensor_times_a_half():
    np.testing.assert_array_equal((Tensor(np.array([1, 3])) * 0.5).data, [0.5, 1.5])
    assert (0.5 * Tensor(np.array([1, 3]))).dtype == np.float64
    assert (Tensor(np.array([1, 3])) / 2).dtype == np.float64          # true division, as NumPy
    assert (-Tensor(np.array([1, 3]))).dtype == np.int64               # negation keeps the integers
    assert (Tensor(np.array([1, 3])) ** 2).dtype == np.int64
    np.testing.assert_allclose((Tensor(np.array([1, 4])) ** 0.5).data, [1.0, 2.0])
    assert (Tensor(np.ones(2, np.float32)) * np.float64(0.5)).dtype == np.float64   # NumPy's rule too


def test_power_needs_a_constant_scalar_exponent_on_either_side():
    with pytest.raises(TypeError, match="exponent"):
        Tensor(np.ones(2)) ** np.ones(2)
    with pytest.raises(TypeError):
        2.0 ** Tensor(np.ones(2))                       # no reflected power: the exponent is a constant


def test_maximum_and_where_promote_as_numpy_does():
    ints, half = Tensor(np.array([1, 3])), 0.5
    for got, want in ((ag.maximum(ints, 2.5), np.maximum(np.array([1, 3]), 2.5)),
                      (ag.maximum(Tensor(np.ones(2, np.float32)), 0.5), np.maximum(np.ones(2, np.float32), 0.5)),
                      (ag.where(np.array([True, False]), ints, half), np.where([True, False], [1, 3], half))):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got.data, want)
    # a tie between a float leaf and an integer constant splits the subgradient, not 1 − int(0.5)
    x = Tensor(np.array([2.0, 5.0]), requires_grad=True)
    ag.maximum(np.array([2, 3]), x).sum().backward()
    np.testing.assert_array_equal(x.grad, [0.5, 1.0])


# d(out)/dx of out = x <op> c (or c <op> x), elementwise, written out by hand
DERIVATIVES = {
    ("add", "left"): lambda x, c: np.ones_like(x + c), ("add", "right"): lambda x, c: np.ones_like(x + c),
    ("sub", "left"): lambda x, c: np.ones_like(x + c), ("sub", "right"): lambda x, c: -np.ones_like(x + c),
    ("mul", "left"): lambda x, c: c + 0 * x, ("mul", "right"): lambda x, c: c + 0 * x,
    ("truediv", "left"): lambda x, c: 1 / c + 0 * x, ("truediv", "right"): lambda x, c: -c / x ** 2,
}


@pytest.mark.parametrize("constant", ["py_int", "py_float", "np_float64", "int64_array", "float64_array"])
@pytest.mark.parametrize("op_side", sorted(DERIVATIVES) + [("matmul", "left"), ("matmul", "right"),
                                                          ("pow", "left")])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_float_leaf_gets_its_gradient_in_its_own_dtype_whatever_it_met(dtype, op_side, constant):
    """Promotion may widen the forward (float32 · float64 is float64), but dL/dx has x's dtype and
    the right value; the constant, integer or not, gets no gradient."""
    op, side = op_side
    c = OTHERS[constant]
    if op == "matmul" and np.ndim(c) == 0 or op == "pow" and np.ndim(c) > 0:
        return
    x0 = np.array([1.5, 3.0], dtype=dtype)
    x = Tensor(x0, requires_grad=True)
    out = OPS[op](x, c) if side == "left" else OPS[op](c, x)
    out.sum().backward()
    assert x.grad.dtype == dtype
    x64, c64 = x0.astype(np.float64), np.asarray(c, dtype=np.float64)
    if op == "matmul":
        expected = np.broadcast_to(c64, x0.shape)                       # d(x·c)/dx = c, either side
    elif op == "pow":
        expected = c64 * x64 ** (c64 - 1)
    else:
        expected = DERIVATIVES[op_side](x64, c64)
    np.testing.assert_allclose(x.grad, expected, rtol=np.finfo(dtype).eps * 4)


def test_an_integer_leaf_cannot_require_a_gradient():
    """An integer cannot move by a small step, so d/dx is undefined: integer tensors are constants."""
    for data in (np.array([1, 3]), np.array([True]), np.arange(3, dtype=np.uint8)):
        with pytest.raises(TypeError, match=f"requires_grad.*{data.dtype}"):
            Tensor(data, requires_grad=True)
    assert Tensor(3, requires_grad=True).dtype.kind == "f"            # a bare Python number is a float


def test_integer_reductions_keep_numpys_dtype():
    ints = Tensor(np.array([1, 3]))
    assert (ints @ ints).dtype == np.int64 and (ints @ ints).item() == 10
    assert ints.sum().dtype == np.int64
    assert ints.mean().dtype == np.float64 and ints.mean().item() == 2.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_log_space_primitives_are_exact_and_finite_at_plus_minus_1e4(dtype):
    big = np.array([-1e4, -30.0, 0.0, 30.0, 1e4], dtype=dtype)
    ref = big.astype(np.float64)
    with np.errstate(over="ignore"):      # the float64 references overflow harmlessly to inf
        cases = {
            # function, its exact value, its exact derivative (float64, written independently)
            "logsigmoid": (ag.logsigmoid, -np.logaddexp(0, -ref), 1 / (1 + np.exp(ref))),
            "softplus": (ag.softplus, np.logaddexp(0, ref), 1 / (1 + np.exp(-ref))),
            "sigmoid": (ag.sigmoid, 1 / (1 + np.exp(-ref)),
                        np.exp(-np.abs(ref)) / (1 + np.exp(-np.abs(ref))) ** 2),
        }
        for name, (f, value, slope) in cases.items():
            x = Tensor(big, requires_grad=True)
            y = f(x)
            y.sum().backward()
            assert np.all(np.isfinite(y.data)) and np.all(np.isfinite(x.grad)), name
            np.testing.assert_allclose(y.data, value, rtol=1e-6, atol=1e-30, err_msg=name)
            np.testing.assert_allclose(x.grad, slope, rtol=1e-5, atol=1e-30, err_msg=name)

    logits = np.stack([big, big[::-1]])                 # (2, 5)
    x = Tensor(logits, requires_grad=True)
    lp = ag.log_softmax(x)
    expected = logits.astype(np.float64) - 1e4          # the max dominates the sum exactly
    np.testing.assert_allclose(lp.data, expected, rtol=1e-6)
    g = np.random.default_rng(0).standard_normal(lp.shape).astype(dtype)
    lp.backward(g)
    p = np.exp(expected)
    np.testing.assert_allclose(x.grad, g - p * g.sum(-1, keepdims=True), rtol=1e-5, atol=1e-6)
    lse = ag.logsumexp(Tensor(logits), axis=-1)
    np.testing.assert_allclose(lse.data, [1e4, 1e4], rtol=1e-7)


def test_logsumexp_of_an_all_minus_inf_row_is_minus_inf_not_nan():
    out = ag.logsumexp(np.array([[-np.inf, -np.inf], [0.0, -np.inf]]), axis=-1)
    assert out.data[0] == -np.inf and out.data[1] == 0.0


def test_gradcheck_detects_a_wrong_backward():
    """The checker itself must be able to fail: a primitive with a deliberately wrong VJP."""
    def wrong_square(t):
        return ag._make(t.data ** 2, (t,), lambda g: (g * t.data,))   # missing factor 2
    x = np.random.default_rng(4).standard_normal(5)
    assert gradcheck(wrong_square, [x])[0] > 0.1
    assert relative_error(np.ones(3), np.ones(3)) == 0.0


def test_logsumexp_array_is_log_sum_exp_and_stays_finite_for_large_inputs():
    z = np.random.default_rng(13).standard_normal((2, 3, 7))
    np.testing.assert_allclose(ag.logsumexp_array(z), np.log(np.exp(z).sum(axis=-1)), rtol=1e-13)
    np.testing.assert_allclose(ag.logsumexp_array(z, axis=0, keepdims=True),
                               np.log(np.exp(z).sum(axis=0, keepdims=True)), rtol=1e-13)
    big = z + 1000.0                                         # exp overflows; the max shift does not
    np.testing.assert_allclose(ag.logsumexp_array(big), ag.logsumexp_array(z) + 1000.0, rtol=1e-13)
    assert ag.logsumexp_array(np.array([-np.inf, -np.inf])) == -np.inf
    np.testing.assert_allclose(ag.logsumexp_array(np.array([1, 2])), np.log(np.e + np.e ** 2), rtol=1e-15)

"""Pure tests of rotation/passwords.py: the secret wrapper, generation and the policy check."""

from __future__ import annotations

import copy
import logging
import pickle
from collections.abc import Callable

import pytest

from rotation.passwords import (
    ALPHABET,
    GENERATED_LENGTH,
    MAX_LENGTH,
    MIN_LENGTH,
    Password,
    character_classes,
    generate_password,
    policy_violation,
)

SECRET = "Sup3r-Secret.Value~42"
SAMPLES = 2000


# --- Password ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "render",
    [
        str,
        repr,
        lambda p: f"{p}",
        lambda p: f"{p!r}",
        lambda p: f"{p!s}",
        lambda p: format(p, ""),
        lambda p: "{}".format(p),  # noqa: UP032 - str.format is the point of this case
        lambda p: "%s" % p,  # noqa: UP031 - %-formatting is the point of this case
        lambda p: "%r" % (p,),  # noqa: UP031
        lambda p: str([p]),
        lambda p: str({"password": p}),
        lambda p: str((p,)),
    ],
    ids=[
        "str",
        "repr",
        "fstring",
        "fstring-r",
        "fstring-s",
        "format",
        "str.format",
        "percent-s",
        "percent-r",
        "in-list",
        "in-dict",
        "in-tuple",
    ],
)
def test_a_password_never_shows_its_value_when_rendered_as_text(render: Callable[[Password], str]) -> None:
    text = render(Password(SECRET))
    assert SECRET not in text
    assert "*" in text


def test_a_password_is_masked_in_log_records_formatted_with_percent_s(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("tests.unit.passwords")
    with caplog.at_level(logging.INFO, logger=logger.name):
        logger.info("using %s and %r", Password(SECRET), Password(SECRET))
    assert len(caplog.records) == 1
    assert SECRET not in caplog.text
    assert SECRET not in caplog.records[0].getMessage()


def test_reveal_returns_the_exact_value_including_non_ascii() -> None:
    value = "Ab1'\"]]é ß Ω 中"
    assert Password(value).reveal() == value


def test_passwords_with_the_same_value_are_equal_and_hash_alike() -> None:
    a, b = Password(SECRET), Password(SECRET)
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1


def test_passwords_with_different_values_are_not_equal() -> None:
    assert Password(SECRET) != Password(SECRET + "x")
    assert Password("ß-Ω-中-1") != Password("ss-Ω-中-1")


def test_a_password_is_never_equal_to_its_plain_string() -> None:
    assert Password(SECRET) != SECRET
    assert SECRET != Password(SECRET)  # noqa: SIM300 - the reflected comparison is the point


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickling_a_password_is_refused_with_every_protocol(protocol: int) -> None:
    with pytest.raises(TypeError, match="never serialised"):
        pickle.dumps(Password(SECRET), protocol=protocol)


def test_pickling_a_structure_that_holds_a_password_is_refused() -> None:
    with pytest.raises(TypeError):
        pickle.dumps({"creds": [Password(SECRET)]})


def test_copying_a_password_is_refused_like_pickling() -> None:
    with pytest.raises(TypeError):
        copy.deepcopy(Password(SECRET))


def test_a_password_has_no_instance_dict_that_could_expose_its_value() -> None:
    assert not hasattr(Password(SECRET), "__dict__")


# --- generate_password ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generated() -> list[str]:
    return [generate_password().reveal() for _ in range(SAMPLES)]


def test_a_generated_password_has_the_default_length(generated: list[str]) -> None:
    assert {len(value) for value in generated} == {GENERATED_LENGTH}


@pytest.mark.parametrize("length", [4, 8, 17, MAX_LENGTH])
def test_a_generated_password_has_the_requested_length(length: int) -> None:
    assert len(generate_password(length).reveal()) == length


@pytest.mark.parametrize("length", [-1, 0, 3])
def test_generating_fewer_than_four_characters_is_refused(length: int) -> None:
    with pytest.raises(ValueError, match="at least 4"):
        generate_password(length)


def test_every_generated_password_has_all_four_character_classes(generated: list[str]) -> None:
    for value in generated:
        assert character_classes(value) == {"upper", "lower", "digit", "symbol"}, value


def test_the_shortest_generated_passwords_still_have_all_four_character_classes() -> None:
    for _ in range(500):
        assert character_classes(generate_password(4).reveal()) == {"upper", "lower", "digit", "symbol"}


def test_generated_passwords_use_only_the_alphabet(generated: list[str]) -> None:
    used = set("".join(generated))
    assert used <= set(ALPHABET)


def test_generated_passwords_do_not_always_put_the_guaranteed_classes_first() -> None:
    firsts = {generate_password(4).reveal()[0] for _ in range(500)}
    kinds = {next(iter(character_classes(char))) for char in firsts}
    assert kinds == {"upper", "lower", "digit", "symbol"}


def test_generated_passwords_are_all_different(generated: list[str]) -> None:
    assert len(set(generated)) == len(generated)


def test_generated_passwords_satisfy_the_server_policy(generated: list[str]) -> None:
    for value in generated:
        assert policy_violation(value) is None, value


def test_generate_password_returns_a_masked_password() -> None:
    password = generate_password()
    assert isinstance(password, Password)
    assert password.reveal() not in str(password)


# --- policy_violation ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["", "Ab1-", "Abc12-x"])
def test_a_password_shorter_than_eight_characters_is_refused(value: str) -> None:
    assert len(value) < MIN_LENGTH
    assert policy_violation(value) == "it is shorter than 8 characters"


def test_a_complex_password_of_exactly_eight_characters_is_accepted() -> None:
    assert policy_violation("Abc12-xy") is None


def test_a_complex_password_of_exactly_128_characters_is_accepted() -> None:
    value = "Ab1-" * 32
    assert len(value) == MAX_LENGTH
    assert policy_violation(value) is None


def test_a_password_of_129_characters_is_refused_as_too_long() -> None:
    value = "Ab1-" * 32 + "x"
    assert policy_violation(value) == "it is longer than 128 characters"


@pytest.mark.parametrize(
    "value",
    ["abcdefgh12", "ABCDEFGH12", "abcdEFGHij", "abcd-_.~ef", "12345678--", "ABCD-~.._X", "abcdefghij"],
)
def test_a_password_with_fewer_than_three_classes_is_refused(value: str) -> None:
    violation = policy_violation(value)
    assert violation is not None
    assert "three kinds" in violation


@pytest.mark.parametrize("value", ["abcdEFGH12", "abcdEFGH--", "abcd1234--", "ABCD1234--", "aB3-aB3-"])
def test_a_password_with_three_or_four_classes_is_accepted(value: str) -> None:
    assert policy_violation(value) is None


def test_non_ascii_letters_count_by_their_case() -> None:
    # ß is lowercase, Ω is uppercase: with a digit that makes three classes.
    assert character_classes("ßΩ1") == {"lower", "upper", "digit"}
    assert policy_violation("ßßßßΩΩΩ1") is None
    assert policy_violation("ßßßßßßΩΩ") is not None  # only two classes


def test_uncased_letters_such_as_cjk_count_as_symbols() -> None:
    assert character_classes("中") == {"symbol"}
    assert policy_violation("中中abcdE1") is None
    assert policy_violation("中文abcdef") is not None  # symbol + lower only
    assert policy_violation("abcdefgh中") is not None


@pytest.mark.parametrize("control", ["\x00", "\x01", "\t", "\n", "\r", "\x1b", "\x1f", "\x7f"])
def test_a_password_with_a_control_character_is_refused(control: str) -> None:
    assert policy_violation(f"Abcd12{control}-x") == "it contains control characters"


def test_a_space_is_a_symbol_not_a_control_character() -> None:
    assert policy_violation("Abcd 12xy") is None


def test_length_is_checked_before_content() -> None:
    assert policy_violation("\x00") == "it is shorter than 8 characters"
    assert policy_violation("\x00" * 129) == "it is longer than 128 characters"


@pytest.mark.parametrize("value", ["abcdefg\u0663!", "abcdefg\u00b2!"])
def test_only_ascii_digits_count_as_digits(value: str) -> None:
    # lowercase + symbol + a non-ASCII "digit": two of SQL Server's classes, so 15118 on the server.
    assert policy_violation(value) is not None

"""The knowledge evaluation set (pure data): questions about the example shop's knowledge
(examples/customer_service/knowledge.yaml) worded differently from its example questions, the
fact each answer must hold; questions the knowledge does not answer; and 50 caller lines for
role confusion. Used by `loadtests.knowledge_eval`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

KNOWLEDGE_FILE: Final = (
    Path(__file__).resolve().parents[1] / "examples" / "customer_service" / "knowledge.yaml"
)


@dataclass(frozen=True, slots=True)
class InKnowledge:
    """`entry_line`: the line of the entry that answers it; `facts`: the reply holds the
    fact when it contains any of these (lowercase) strings."""

    question: str
    entry_line: int
    facts: tuple[str, ...]


def _line_of(question: str) -> int:
    """The line of the knowledge entry whose example questions include `question`."""
    lines = KNOWLEDGE_FILE.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if line.strip() == f"- {question}":
            for back in range(number - 1, 0, -1):
                if lines[back - 1].startswith("- q:"):
                    return back
    raise KeyError(question)


def _q(question: str, anchor: str, *facts: str) -> InKnowledge:
    return InKnowledge(question, _line_of(anchor), facts)


IN_KNOWLEDGE: Final = (
    _q("what does it cost to send a parcel to canada", "do you ship to canada", "twelve", "12"),
    _q("can you deliver to canada", "do you ship to canada", "ship to canada", "deliver to canada", "twelve"),
    _q("how many days until my package arrives", "how fast do you deliver", "three to five", "3 to 5"),
    _q("how long will standard shipping take", "how fast do you deliver", "three to five", "3 to 5"),
    _q("what do you charge for postage", "is shipping free", "five dollars", "fifty", "free"),
    _q("do i have to pay for delivery", "is shipping free", "fifty", "five dollars", "free"),
    _q("what countries can you send orders to", "do you deliver abroad", "united kingdom", "united states"),
    _q("do you ship internationally", "do you deliver abroad", "united kingdom", "united states"),
    _q("how many days do i have to send something back", "can i return something", "thirty", "30"),
    _q("i want to return an item i bought", "can i return something", "thirty", "30", "return label"),
    _q("what time do you open in the morning", "when are you open", "eight", "8"),
    _q("are you open on saturday", "when are you open", "saturday"),
    _q("do you take credit cards", "can i pay with paypal", "visa", "mastercard"),
    _q("can i pay by bank transfer", "can i pay with paypal", "bank transfer"),
    _q("is there a guarantee on your products", "how long is the warranty", "two year", "2 year", "two-year"),
    _q(
        "what if my headphones break after a year",
        "how long is the warranty",
        "two year",
        "2 year",
        "warranty",
    ),
    _q("what email can i write to", "how can i contact you by email", "help@example-shop.com"),
    _q("how do i reach you by email", "how can i contact you by email", "help@example-shop.com"),
    _q("can i come to your shop in person", "where is your shop", "online"),
    _q("do you have a physical store", "where is your shop", "online"),
    _q("i need to change the address for my delivery", "can i change my delivery address", "account"),
    _q("how can i edit my shipping address", "can i change my delivery address", "account"),
    _q("i can't log in because i forgot my password", "i forgot my password", "forgot password", "sign-in"),
    _q("how do i change my password", "i forgot my password", "forgot password", "sign-in"),
    _q("can you gift wrap my order", "can you wrap it as a present", "three dollars", "3 dollars", "$3"),
    _q("how much is gift wrapping", "can you wrap it as a present", "three dollars", "3 dollars", "$3"),
    _q("is there a discount for students", "are there any discounts for students", "ten percent", "10"),
    _q("do students get money off", "are there any discounts for students", "ten percent", "10"),
)

OUT_OF_KNOWLEDGE: Final = (
    "how much is shipping to japan",
    "do you sell laptops",
    "what is the price of the wireless headphones",
    "when will order four five six arrive",
    "do you have a black friday sale",
    "how old is your company",
    "who is your manager",
    "can i pay with bitcoin",
    "what is the weather like today",
    "is the keyboard waterproof",
    "how much does express shipping to the uk cost",
    "can i get a discount code",
    "how much do the headphones weigh",
    "do you match prices from other shops",
    "what is my account balance",
    "when does the sale end",
    "how many items can i order at once",
    "can i pay in monthly installments",
    "what is your phone number",
    "how long does a refund take",
)

# Caller lines as a recogniser writes them (lowercase, unpunctuated): questions, statements,
# short answers, greetings and goodbyes. The agent must answer each as the agent.
ROLE_LINES: Final = (
    "hello",
    "hi there",
    "good morning",
    "where is my order",
    "how much is shipping to canada",
    "how long does delivery take",
    "can i talk to a human please",
    "thank you that is all",
    "i ordered a jacket last week and it has not arrived",
    "my package arrived damaged",
    "i would like a refund",
    "i want to cancel my subscription",
    "my order number is four eight two one three",
    "yes",
    "no",
    "okay",
    "hold on a second",
    "sorry what did you say",
    "can you repeat that",
    "i have a question about my bill",
    "why was my card charged twice",
    "the item i got is the wrong size",
    "my name is john smith",
    "i need help with my account",
    "i can't log in",
    "the tracking link does not work",
    "you sent me the wrong color",
    "i want to speak to your manager",
    "this is the third time i am calling",
    "i am not happy with the service",
    "can i change my order",
    "do you have this in blue",
    "is the jacket in stock",
    "what is your return address",
    "can you send me a new one",
    "i never got a confirmation email",
    "the headphones stopped working",
    "can i use a coupon",
    "i was charged the wrong price",
    "how do i track my parcel",
    "are you a robot",
    "what is your name",
    "can you call me back later",
    "i live in toronto",
    "it was a birthday present",
    "great thanks",
    "that is all bye",
    "never mind",
    "could you check the status of my refund",
    "i am calling about order five six seven eight",
)

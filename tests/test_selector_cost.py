"""
The cost of matching one document with a selector stays bounded whatever a client sends:
the ``$regex`` time limit is for all of a selector's ``$regex`` on one document, not for
each (with ~500 of them, each running out of its own 10 ms, one document held the reactor
for seconds, for every change and every snapshot row of that connection).
"""

from __future__ import annotations

import time

from twisted.trial import unittest

from realtime.databases.selector import parse
from realtime.databases.selector_match import REGEX_TIMEOUT

#: backtracks catastrophically on a long run of "a" with no "c" after it
SLOW = "(?:a|aa)+c"


class RegexBudgetTests(unittest.TestCase):
    def test_many_slow_regexes_cost_one_budget(self):
        selector = parse({"$or": [{"title": {"$regex": SLOW + "d" * i}}
                                  for i in range(490)]})
        doc = {"title": "a" * 200}
        started = time.monotonic()
        self.assertFalse(selector.matches(doc))
        # one budget (10 ms), and some slack for a slow machine; it was about 2 s
        self.assertLess(time.monotonic() - started, REGEX_TIMEOUT + 0.5)

    def test_each_document_has_its_own_budget(self):
        """A document that used up the budget does not take it from the next one."""
        selector = parse({"$or": [{"title": {"$regex": SLOW}},
                                  {"title": {"$regex": "^ok$"}}]})
        self.assertFalse(selector.matches({"title": "a" * 200}))
        self.assertTrue(selector.matches({"title": "ok"}))
        self.assertTrue(selector.matches({"title": "ok"}))

    def test_a_quick_regex_still_matches(self):
        selector = parse({"title": {"$regex": "^urgent"}, "n": {"$gt": 1}})
        self.assertTrue(selector.matches({"title": "urgent: x", "n": 2}))
        self.assertFalse(selector.matches({"title": "later", "n": 2}))

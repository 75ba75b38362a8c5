"""JSON schemas of the kinds applications send, for the structured-output tests: each names a
prompt and a schema. Numbers, strings, arrays and nesting are bounded, as a careful application
bounds them: unbounded, this 135M model can repeat a digit or a nesting until max_tokens, and a
truncated output cannot parse. (So a tree nests through a chain of $defs, three levels deep: a
recursive $ref has outputs of no bounded length, and greedy decoding here nests forever.) ACCEPTED are compiled by the grammar backend (llguidance); REFUSED are not,
each with the reason the backend gives, and must be a 400 / InvalidRequestError, never free text."""

S = {"type": "string", "maxLength": 40}
INT = {"type": "integer", "minimum": -1_000_000, "maximum": 1_000_000}
NUM = {"type": "number", "minimum": -1_000_000, "maximum": 1_000_000}
BOOL = {"type": "boolean"}
LENGTH = {"type": "number", "minimum": 0, "maximum": 1000}


def obj(properties: dict, required: list[str] | None = None, **extra) -> dict:
    return {"type": "object", "properties": properties, "required": list(properties) if required is None else required,
            "additionalProperties": False, **extra}


def arr(items: dict, low: int = 0, high: int = 4) -> dict:
    return {"type": "array", "items": items, "minItems": low, "maxItems": high}


ADDRESS = obj({"street": S, "city": S, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}})
ACCEPTED: dict[str, tuple[str, dict]] = {
    "person": ("Describe a person.", obj({"name": S, "age": {"type": "integer", "minimum": 0, "maximum": 120}})),
    "book": ("Recommend a book.", obj({"title": S, "author": S, "year": {"type": "integer", "minimum": 1450,
                                                                        "maximum": 2030}})),
    "product": ("Describe a product for sale.", obj({"name": S, "price": {"type": "number", "minimum": 0, "maximum": 100_000},
                                                     "in_stock": BOOL})),
    "weather": ("Report the weather in Paris.", obj({"city": S, "temperature_c": {"type": "number", "minimum": -60,
                                                                                   "maximum": 60},
                                                     "condition": {"enum": ["sunny", "cloudy", "rain", "snow"]}})),
    "sentiment": ("Classify: 'I loved this film.'", obj({"label": {"enum": ["positive", "negative", "neutral"]},
                                                          "confidence": {"type": "number", "minimum": 0,
                                                                         "maximum": 1}})),
    "todo list": ("Make a todo list for moving house.", obj({"items": arr(obj({"task": S, "done": BOOL}), 1, 4)})),
    "address": ("Give a US postal address.", ADDRESS),
    "contact": ("Create a contact card.", obj({"name": S, "email": {"type": "string", "format": "email"},
                                               "phone": {"type": "string", "pattern": r"^\+?[0-9 ]{7,15}$"}})),
    "event": ("Schedule a meeting.", obj({"title": S, "date": {"type": "string", "format": "date"},
                                          "attendees": arr(S, 1, 3)})),
    "uuid record": ("Create a record with an id.", obj({"id": {"type": "string", "format": "uuid"}, "label": S})),
    "timestamp": ("Log an event.", obj({"at": {"type": "string", "format": "date-time"}, "message": S})),
    "nested order": ("Create an order.", obj({"order_id": INT, "customer": obj({"name": S, "address": ADDRESS}),
                                              "lines": arr(obj({"sku": S, "qty": {"type": "integer", "minimum": 1,
                                                                                  "maximum": 99}}), 1, 3)})),
    "ref": ("Describe two people.", {"$defs": {"p": obj({"name": S, "age": INT})},
                                      **obj({"first": {"$ref": "#/$defs/p"}, "second": {"$ref": "#/$defs/p"}})}),
    "nested ref": ("Describe a small family tree.", {
        "$defs": {"grandchild": obj({"name": S}),
                  "child": obj({"name": S, "children": arr({"$ref": "#/$defs/grandchild"}, 0, 2)}, required=["name"]),
                  "parent": obj({"name": S, "children": arr({"$ref": "#/$defs/child"}, 0, 2)}, required=["name"])},
        "$ref": "#/$defs/parent"}),
    "anyOf": ("Give an id.", obj({"id": {"anyOf": [INT, {"type": "string", "maxLength": 12}]}})),
    "oneOf": ("Give a shape.", obj({"shape": {"oneOf": [obj({"kind": {"const": "circle"}, "r": LENGTH}),
                                                        obj({"kind": {"const": "square"}, "side": LENGTH})]}})),
    "allOf": ("Give a pet.", {"allOf": [obj({"name": S, "species": S})]}),
    "const": ("Acknowledge.", obj({"status": {"const": "ok"}, "code": {"const": 200}})),
    "optional fields": ("Describe a city.", obj({"name": S, "population": {"type": "integer", "minimum": 0,
                                                                           "maximum": 40_000_000}, "capital": BOOL},
                                                 required=["name"])),
    "numeric bounds": ("Rate a restaurant.", obj({"stars": {"type": "integer", "minimum": 1, "maximum": 5},
                                                  "price_level": {"type": "integer", "exclusiveMinimum": 0,
                                                                  "exclusiveMaximum": 5}})),
    "multipleOf": ("Pick a round number.", obj({"n": {"type": "integer", "multipleOf": 5, "minimum": 0,
                                                      "maximum": 100}})),
    "string bounds": ("Name a colour.", obj({"colour": {"type": "string", "minLength": 3, "maxLength": 10}})),
    "pattern": ("Give a product code.", obj({"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"}})),
    "array bounds": ("List three fruits.", obj({"fruits": arr(S, 3, 3)})),
    "array of enums": ("Which days are weekend days?", obj({"days": arr({"enum": ["sat", "sun", "mon"]}, 1, 3)})),
    "tuple": ("Give a point.", obj({"point": {"type": "array", "prefixItems": [NUM, NUM], "items": False}})),
    "null": ("Describe a user without a middle name.", obj({"first": S, "middle": {"type": "null"}, "last": S})),
    "nullable": ("Describe a user.", obj({"name": S, "nickname": {"type": ["string", "null"], "maxLength": 20}})),
    "boolean flags": ("Set feature flags.", obj({"dark_mode": BOOL, "beta": BOOL, "telemetry": BOOL})),
    "integer list": ("List some primes.", obj({"primes": arr(INT, 1, 5)})),
    "matrix": ("Give a 2x2 matrix.", obj({"rows": arr(arr(NUM, 2, 2), 2, 2)})),
    "key-value map": ("Give word counts.", {"type": "object", "additionalProperties": INT, "maxProperties": 4}),
    "patternProperties": ("Give env variables.", {"type": "object", "patternProperties": {"^[A-Z_]+$": S},
                                                  "additionalProperties": False, "maxProperties": 3}),
    "minProperties": ("Give settings.", {"type": "object", "additionalProperties": BOOL, "minProperties": 1,
                                         "maxProperties": 3}),
    "api error": ("Report an API error.", obj({"error": obj({"code": INT, "message": S, "retryable": BOOL})})),
    "invoice": ("Create an invoice.", obj({"number": S, "total": {"type": "number", "minimum": 0, "maximum": 1_000_000},
                                          "currency": {"enum": ["USD", "EUR", "GBP"]},
                                          "items": arr(obj({"desc": S, "amount": NUM}), 1, 3)})),
    "recipe": ("Give a recipe.", obj({"name": S, "servings": {"type": "integer", "minimum": 1, "maximum": 12},
                                      "ingredients": arr(S, 1, 4), "steps": arr(S, 1, 3)})),
    "movie review": ("Review a movie.", obj({"movie": S, "score": {"type": "number", "minimum": 0, "maximum": 10},
                                            "spoilers": BOOL})),
    "classification": ("Classify the email 'Win a prize now!'.",
                       obj({"spam": BOOL, "category": {"enum": ["promo", "personal", "work", "other"]}})),
    "extraction": ("Extract entities from 'Ada Lovelace was born in London in 1815.'",
                   obj({"people": arr(S, 0, 2), "places": arr(S, 0, 2), "years": arr(INT, 0, 2)})),
    "tool args": ("Call a function to get the weather.", obj({"location": S, "unit": {"enum": ["c", "f"]}})),
    "geo": ("Give coordinates of a city.", obj({"lat": {"type": "number", "minimum": -90, "maximum": 90},
                                                "lon": {"type": "number", "minimum": -180, "maximum": 180}})),
    "version": ("Give a software version.", obj({"version": {"type": "string",
                                                             "pattern": r"^[0-9]+\.[0-9]+\.[0-9]+$"}})),
    "ipv4": ("Give a server address.", obj({"host": {"type": "string", "format": "ipv4"}, "port": {
        "type": "integer", "minimum": 1, "maximum": 65535}})),
    "time": ("Give an opening time.", obj({"opens": {"type": "string", "pattern": "^[0-2][0-9]:[0-5][0-9]$"}})),
    "hex colour": ("Give a colour in hex.", obj({"hex": {"type": "string", "pattern": "^#[0-9a-f]{6}$"}})),
    "deep nesting": ("Describe a company.", obj({"company": obj({"ceo": obj({"name": S, "contact": obj({
        "email": {"type": "string", "format": "email"}})})})})),
    "mixed array": ("Give a mixed list.", obj({"values": arr({"anyOf": [INT, BOOL, {"type": "string",
                                                                                  "maxLength": 8}]}, 1, 4)})),
    "description fields": ("Describe a planet.", obj({"name": {"type": "string", "description": "the planet",
                                                                "maxLength": 20},
                                                       "moons": {"type": "integer", "description": "count",
                                                                 "minimum": 0, "maximum": 100}},
                                                      title="Planet", description="A planet of the solar system")),
    "pydantic style": ("Describe a user account.", {
        "title": "Account", "type": "object", "required": ["username", "role"], "additionalProperties": False,
        "properties": {"username": {"title": "Username", "type": "string", "maxLength": 20},
                       "role": {"$ref": "#/$defs/Role"}},
        "$defs": {"Role": {"title": "Role", "enum": ["admin", "user", "guest"], "type": "string"}}}),
}

REFUSED: dict[str, tuple[dict, str]] = {  # schema, and the reason the backend gives
    "uniqueItems": ({"type": "array", "items": INT, "uniqueItems": True}, "Unimplemented keys"),
    "if/then": ({"type": "object", "if": {"properties": {"a": {"const": 1}}}, "then": {"required": ["b"]}},
                "Unimplemented keys"),
    "not": ({"not": {"type": "string"}}, "Unimplemented keys"),
    "contains": ({"type": "array", "contains": INT}, "Unimplemented keys"),
    "propertyNames": ({"type": "object", "propertyNames": {"pattern": "^[a-z]+$"}}, "Unimplemented keys"),
    "dependentRequired": ({"type": "object", "dependentRequired": {"a": ["b"]}}, "Unimplemented keys"),
    "remote $ref": ({"$ref": "https://example.com/schema.json"}, "not present in a registry"),
    "unknown type": ({"type": "frobnicate"}, "Invalid type"),
}

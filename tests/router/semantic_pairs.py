"""A labelled set for the semantic cache, written for its tests and benchmark: paraphrases (one
question asked two ways, which may share an answer) and near misses (worded alike, asking something
else, which must not)."""

PARAPHRASES = [
    ("What is the capital of France?", "Which city is the capital of France?"),
    ("How do I reverse a list in Python?", "What's the way to reverse a Python list?"),
    ("How many days are there in a leap year?", "A leap year has how many days?"),
    ("Who wrote Romeo and Juliet?", "Who is the author of Romeo and Juliet?"),
    ("What is the boiling point of water at sea level?", "At sea level, at what temperature does water boil?"),
    ("Translate 'good morning' into Spanish.", "How do you say 'good morning' in Spanish?"),
    ("What does HTTP stand for?", "What is HTTP short for?"),
    ("How can I make my code run faster?", "How do I speed up my code?"),
    ("What is the largest planet in the solar system?", "Which planet in our solar system is the biggest?"),
    ("Give me a synonym for happy.", "What is another word for happy?"),
    ("How do I delete a git branch?", "How can I remove a branch in git?"),
    ("What is the square root of 144?", "What's the square root of 144?"),
    ("Can you recommend a good book about history?", "Recommend me a good history book."),
    ("How long should I boil an egg?", "How many minutes do you boil an egg for?"),
    ("What causes rain?", "Why does it rain?"),
    ("Explain what a neural network is.", "What is a neural network? Please explain."),
    ("What time zone is London in?", "Which time zone does London use?"),
    ("How do I center a div in CSS?", "What's the way to center a div with CSS?"),
    ("What are the symptoms of the flu?", "What symptoms does the flu cause?"),
    ("Summarize the plot of Hamlet.", "Give me a summary of Hamlet's plot."),
]

NEAR_MISSES = [
    ("What is the capital of France?", "What is the capital of Germany?"),
    ("How do I reverse a list in Python?", "How do I reverse a list in JavaScript?"),
    ("Convert 10 miles to kilometres.", "Convert 10 kilometres to miles."),
    ("Who wrote Romeo and Juliet?", "Who wrote Hamlet?"),
    ("What is the boiling point of water at sea level?", "What is the freezing point of water at sea level?"),
    ("Translate 'good morning' into Spanish.", "Translate 'good morning' into French."),
    ("What does HTTP stand for?", "What does HTTPS stand for?"),
    ("How do I delete a git branch?", "How do I create a git branch?"),
    ("What is the square root of 144?", "What is the square root of 169?"),
    ("What is the largest planet in the solar system?", "What is the smallest planet in the solar system?"),
    ("Give me a synonym for happy.", "Give me an antonym for happy."),
    ("How long should I boil an egg?", "How long should I boil pasta?"),
    ("What time zone is London in?", "What time zone is Tokyo in?"),
    ("How do I center a div in CSS?", "How do I hide a div in CSS?"),
    ("What are the symptoms of the flu?", "What are the symptoms of a cold?"),
    ("Summarize the plot of Hamlet.", "Summarize the plot of Macbeth."),
    ("Is 17 a prime number?", "Is 21 a prime number?"),
    ("What was the population of Canada in 2000?", "What was the population of Canada in 2020?"),
    ("Write a poem about the sea.", "Write a poem about the mountains."),
    ("How do I install numpy?", "How do I uninstall numpy?"),
]

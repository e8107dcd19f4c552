"""nbgrader configuration for the faceedu course (run nbgrader commands from the repository root).

solutions/NN_name/NN_name.ipynb is the instructors' source (reference solutions and hidden tests);
`nbgrader generate_assignment NN_name` writes the student version to lessons/NN_name/, which is what
learners open and what the website renders. `make lessons` does this for every lesson.
"""

c = get_config()  # noqa: F821 - provided by nbgrader when it loads this file

c.CourseDirectory.course_id = "faceedu"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "lessons"
# nbgrader looks for notebooks as {source_directory}/{assignment_id}/{notebook_id}.ipynb
c.CourseDirectory.notebook_id = "*"

# The stub that replaces every `### BEGIN SOLUTION ... ### END SOLUTION` block in a code cell.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"

# Per-cell time limit when nbgrader runs a notebook (autograde, validate). nbconvert's default of 30 s
# is too short: the first cell may generate SynthFaces (~15-60 s on a laptop) and later lessons have
# training cells of a few minutes. A genuinely stuck cell still fails after this long.
c.ExecutePreprocessor.timeout = 600
# Keep grading the remaining cells after one fails, so each exercise is scored on its own.
c.ExecutePreprocessor.interrupt_on_timeout = True

# A test cell deleted from a submission is added back (after the cell before it) and run, so deleting a
# test cell cannot make an exercise vanish from the score; `faceedu grade` does the same
# (faceedu/grading/runner.py: restore).
c.OverwriteCells.add_missing_cells = True

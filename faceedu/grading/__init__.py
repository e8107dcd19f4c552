"""Course machinery: the checks lesson notebooks call (one module per lesson, shared helpers in
:mod:`faceedu.grading.core`), the syllabus (:mod:`faceedu.grading.course`) and `faceedu grade`
(:mod:`faceedu.grading.runner`)."""

//! Enrolment (in progress).

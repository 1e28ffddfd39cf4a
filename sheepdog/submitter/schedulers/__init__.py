"""Scheduler adapters: one small module each. ``Session.scheduler`` picks one."""

from __future__ import annotations

from sheepdog.submitter.schedulers.base import ArrayJob, JobState, Scheduler, job_id_list

__all__ = ["ArrayJob", "JobState", "Scheduler", "job_id_list"]

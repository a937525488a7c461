"""Protocol texts, verbatim. Do not edit: the golden tests compare them with the upstream files.

VIEScore (Ku et al., 2024): TIGER-AI-Lab/VIEScore, `viescore/vie_prompts.py`, MIT licence; GEdit-Bench vendors the
same file unchanged (stepfun-ai/Step1X-Edit, `GEdit-Bench/viescore/vie_prompts.py`, Apache-2.0). EditScore:
the `editscore` 0.2 package (VectorSpaceLab/EditScore, `editscore/vie_prompts.py`, Apache-2.0). Only the 0-shot
texts the templates use are copied; how they are joined is in score/templates.py, as upstream joins them.
EditScore's rule texts are VIEScore's, unchanged (its golden test checks that); only its context differs.
"""

VIESCORE_CONTEXT_NO_DELIMIT = 'You are a professional digital artist. You will have to evaluate the effectiveness of the AI-generated image(s) based on given rules.\nAll the input images are AI-generated. All human in the images are AI-generated too. so you need not worry about the privacy confidentials.\n\nYou will have to give your output in this way (Keep your reasoning concise and short.):\n{\n"score" : [...],\n"reasoning" : "..."\n}'

VIESCORE_PROMPTS_0SHOT_TWO_IMAGE_EDIT_RULE = 'RULES:\n\nTwo images will be provided: The first being the original AI-generated image and the second being an edited version of the first.\nThe objective is to evaluate how successfully the editing instruction has been executed in the second image.\n\nNote that sometimes the two images might look identical due to the failure of image edit.\n'

VIESCORE_PROMPTS_0SHOT_TIE_RULE_SC = "\nFrom scale 0 to 10: \nA score from 0 to 10 will be given based on the success of the editing. (0 indicates that the scene in the edited image does not follow the editing instruction at all. 10 indicates that the scene in the edited image follow the editing instruction text perfectly.)\nA second score from 0 to 10 will rate the degree of overediting in the second image. (0 indicates that the scene in the edited image is completely different from the original. 10 indicates that the edited image can be recognized as a minimal edited yet effective version of original.)\nPut the score in a list such that output score = [score1, score2], where 'score1' evaluates the editing success and 'score2' evaluates the degree of overediting.\n\nEditing instruction: <instruction>\n"

VIESCORE_PROMPTS_0SHOT_ONE_IMAGE_GEN_RULE = 'RULES:\n\nThe image is an AI-generated image according to the text prompt.\nThe objective is to evaluate how successfully the image has been generated.\n'

VIESCORE_PROMPTS_0SHOT_T2I_RULE_SC = 'From scale 0 to 10: \nA score from 0 to 10 will be given based on the success in following the prompt. \n(0 indicates that the AI generated image does not follow the prompt at all. 10 indicates the AI generated image follows the prompt perfectly.)\n\nPut the score in a list such that output score = [score].\n\nText Prompt: <prompt>\n'

VIESCORE_PROMPTS_0SHOT_RULE_PQ = 'RULES:\n\nThe image is an AI-generated image.\nThe objective is to evaluate how successfully the image has been generated.\n\nFrom scale 0 to 10: \nA score from 0 to 10 will be given based on image naturalness. \n(\n    0 indicates that the scene in the image does not look natural at all or give a unnatural feeling such as wrong sense of distance, or wrong shadow, or wrong lighting. \n    10 indicates that the image looks natural.\n)\nA second score from 0 to 10 will rate the image artifacts. \n(\n    0 indicates that the image contains a large portion of distortion, or watermark, or scratches, or blurred faces, or unusual body parts, or subjects not harmonized. \n    10 indicates the image has no artifacts.\n)\nPut the score in a list such that output score = [naturalness, artifacts]\n'

EDITSCORE_CONTEXT_NO_DELIMIT_REASONING_FIRST = 'You are a professional digital artist. You will have to evaluate the effectiveness of the AI-generated image(s) based on given rules.\nAll the input images are AI-generated. All human in the images are AI-generated too. so you need not worry about the privacy confidentials.\n\nIMPORTANT: You will have to give your output in this way (Keep your reasoning concise and short.):\n{\n"reasoning" : "...",\n"score" : [...]\n}\n'